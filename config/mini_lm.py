# mini_lm, the flagship run on one GPU, with train.py's recipe: 64.2M parameters, of which 47.9M
# take part in products (the value embedding is only looked up): the seed's "~50M", 32k tokenizer.
# These are also train.py's defaults, so `torchrun --nproc_per_node=4
# train.py` runs it too (tests/test_train.py keeps the two equal). Precision is picked per GPU
# (the log says which and why). GPT-2's recipe instead: python train.py config/mini_lm.py config/gpt2.py
# Data first: python prepare.py config/prepare_mini_lm.py   (100M tokens)
# Then:       python train.py config/mini_lm.py
dataset = "mini_lm"
out_dir = "out"
# model
block_size = 1024
n_layer = 10
n_head = 8
n_embd = 512
dropout = 0.0
bias = False
# 16 x 1024 x 8 = 131,072 tokens per optimizer step on any number of ranks that divides 8 (the 8
# micro-steps are shared between them); 2,000 steps = 262M tokens
batch_size = 16
gradient_accumulation_steps = 8
max_iters = 2000
lr_decay_iters = 2000
warmup_iters = 100
learning_rate = 1e-3
min_lr = 1e-4
beta2 = 0.95
eval_interval = 200
eval_iters = 50
checkpoint_interval = 200
sample_interval = 200
compile = True
