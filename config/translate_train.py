# The translator's training on the task (python bench.py translate, stage "train"): the CPU demo's
# model and recipe, from scratch, on the translation task's pairs in the corpus's tokenizer, the loss
# on the responses only; 7,000 steps of 2,048 tokens, about 2.7 epochs of the pairs. (After a
# pretraining, --pretrain, the model keys are the checkpoint's and this is its fine-tune.)
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
value_embeddings = 2
dropout = 0.0
max_iters = 7000
lr_decay_iters = 7000
warmup_iters = 50
learning_rate = 1.6e-2
min_lr = 1.6e-3
beta2 = 0.99
eval_interval = 500
eval_iters = 10
log_interval = 100
checkpoint_interval = 500
sample_interval = 0
compile = False
