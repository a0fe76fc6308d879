# The translator's pretraining (python bench.py translate, stage "pretrain"): the CPU demo's model
# and recipe on config/translate_corpus.py's verses, about 2.5 epochs of them.
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
value_embeddings = 2
max_iters = 1800
lr_decay_iters = 1800
warmup_iters = 50
learning_rate = 1.6e-2
min_lr = 1.6e-3
beta2 = 0.99
eval_interval = 300
eval_iters = 10
log_interval = 50
checkpoint_interval = 250
sample_interval = 0
compile = False
