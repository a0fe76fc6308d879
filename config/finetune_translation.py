# Fine-tune the CPU demo's checkpoint on the translation task: the checkpoint's model and tokenizer,
# a fresh optimizer and schedule, the loss on the responses only (the data's loss mask).
# Data first: python prepare.py config/prepare_translation.py   (after make demo: out/best.pt)
# Then:       python train.py config/finetune_translation.py
init_from = "out/best.pt"
dataset = "translation"
out_dir = "out/translation"
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 3000
lr_decay_iters = 3000
warmup_iters = 50
eval_interval = 500
eval_iters = 20
checkpoint_interval = 500
sample_interval = 0
compile = False
