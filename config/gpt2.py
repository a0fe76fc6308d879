# GPT-2's recipe, as nanoGPT trains it: learned positions, GELU, tied LM head, GPT-2 initialisation,
# AdamW with cosine decay, random batches. Its checkpoints load into nanoGPT's and GPT-2's code.
# Layer it over a run's config:  python train.py config/cpu_demo.py config/gpt2.py
# (with a lower AdamW rate than the config's, which is set for train.py's own recipe: for the demo,
# --learning_rate=2e-3 --min_lr=2e-4, as bench.py ablate's gpt2_lr_ratio does). bench.py ablate measures each
# of train.py's changes against it.
position = "learned"
activation = "gelu"
qk_norm = False
zero_init = False
tied_head = True
value_embeddings = 0
logit_softcap = 0.0
optimizer = "adamw"
lr_schedule = "cosine"
batch_order = "random"
