# The translation fine-tuning task: English <-> Spanish verses of the King James Version and the
# Reina-Valera 1909, split by book (curation/bibles.py), encoded with the pretrained checkpoint's
# tokenizer. Needs Debian's sword-text-kjv and sword-text-sparv and pysword (requirements-extra.txt).
# python prepare.py config/prepare_translation.py      (after make demo, which writes out/best.pt)
dataset = "translation"
task = "translation"
tokenizer_from = "out/best.pt"
