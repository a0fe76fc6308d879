# The CPU demo, `make demo`'s main job (data first: python prepare.py, an 8,192-token vocabulary):
# train.py's recipe on a 4-layer, 128-wide model, sized to train in minutes on 2 CPU cores.
# GPT-2's recipe on the same run: add config/gpt2.py. Figures: BENCHMARKS.md; how each setting
# was chosen: docs/experiments.md.
dataset = "demo"
out_dir = "out"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
dropout = 0.0
# 1,800 steps of 2,048 tokens: just under one epoch of the demo's training tokens
max_iters = 1800
lr_decay_iters = 1800
warmup_iters = 50
# AdamW holds only the embeddings and gains under this recipe, and trains them at a higher rate
# than GPT-2's recipe wants; Muon keeps train.py's rate
learning_rate = 1.6e-2
min_lr = 1.6e-3
# an evaluation (10 batches per split) and a sample every 300 steps, so most of the time trains
eval_interval = 300
eval_iters = 10
log_interval = 50
checkpoint_interval = 250
# two value-embedding tables, so every one of the 4 layers gets one (train.py's default, 1, gives
# them to the first and last layer)
value_embeddings = 2
sample_interval = 300
beta2 = 0.99
compile = False
