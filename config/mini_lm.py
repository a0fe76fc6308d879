# mini_lm: ~48M parameters with the 32k tokenizer, the user's targets (GPU). Data: python prepare.py
# config/prepare_mini_lm.py. Training settings join this file with train.py.
dataset = "mini_lm"
block_size = 1024
vocab_size = 32000
n_layer = 10
n_head = 8
n_embd = 512
dropout = 0.0
bias = False
