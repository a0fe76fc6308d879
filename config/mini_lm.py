# mini_lm: 48.4M parameters with the 32k tokenizer, for the user's targets on one GPU
# (T4/V100 class: fp16 with a gradient scaler is picked automatically where bf16 is missing).
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
# 16 x 1024 x 8 = 131,072 tokens per optimizer step; 2,000 steps = 262M tokens (~2.6 epochs)
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
