# The README's main job (data first: python prepare.py, the demo corpus with an 8,192-token
# vocabulary). train.py's recipe (rotary, ReLU^2, QK-norm, zero-init projections, value embeddings,
# Muon + AdamW, warmup-stable-decay, epoch order) on a 4-layer, 128-wide model: on a 2-core CPU it
# learns past the Kneser-Ney trigram baseline (bits per byte, eval.py) on code and on prose
# (BENCHMARKS.md, "The CPU demo"). GPT-2's recipe on the same run: add config/gpt2.py.
dataset = "demo"
out_dir = "out"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
dropout = 0.0
# 1,800 steps of 2,048 tokens (0.94 epochs of the 3.9M training tokens): 2,100 steps beat the
# Kneser-Ney trigram on prose too, but the demo then took longer than the GPT-2 demo it replaced
# (BENCHMARKS.md, "More steps")
max_iters = 1800
lr_decay_iters = 1800
warmup_iters = 50
# AdamW's rate (it holds only the embeddings and gains here) is 8x the old GPT-2 demo's: the best of
# the rates tried on this run (BENCHMARKS.md, "Learning rates"; at the full length beside Muon's 0.02
# it beat 8e-3 and 3.2e-2). Muon keeps train.py's 0.02, the best of 0.01-0.06 at the demo's full
# length ("Muon's rate at the demo's full length")
learning_rate = 1.6e-2
min_lr = 1.6e-3
# an evaluation (10 batches per split) and a sample every 300 steps: fewer evaluations leave more of
# the demo's wall-clock to training steps
eval_interval = 300
eval_iters = 10
log_interval = 50
checkpoint_interval = 250
# two value-embedding tables, so every one of the 4 layers gets one (train.py's default is 1: the
# first and last layer): 0.038 bits per byte better for 2% more step time (BENCHMARKS.md)
value_embeddings = 2
sample_interval = 300
beta2 = 0.99
compile = False
