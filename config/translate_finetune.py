# The translator's fine-tune (python bench.py translate, stage "finetune"): the pretrained model on
# the translation task's pairs, the loss on the responses only, a fresh optimizer and schedule.
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 3000
lr_decay_iters = 3000
warmup_iters = 50
eval_interval = 500
eval_iters = 20
log_interval = 50
checkpoint_interval = 500
sample_interval = 0
compile = False
