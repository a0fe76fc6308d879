# The CPU demo's corpus with the translation task's Bibles in it: the demo's sources at their
# shares, plus every chapter of the books the task trains on (never Acts, its validation books, Mark
# or Hebrews), each verse in English and in Spanish (paired=False: a document per chapter and
# language instead). The bible source's weight is above its share of any budget, so all of it
# goes in; target_tokens is the demo's 4M plus it, and every source is collected whole (the
# demo's collection cap would stop the others at their tiny share by weight).
#   python prepare.py config/prepare_bible_mix.py
#   python train.py config/cpu_demo.py --dataset=demo_bible --out_dir=out/bible
# then the translation task in its tokens and the fine-tune from it (README, "Fine-tuning").
dataset = "demo_bible"
sources = [dict(kind="files", name="code", paths=["stdlib"], extensions=[".py"], weight=0.5),
           dict(kind="wiki_offline", name="wiki", languages=["en", "es", "fr"], weight=0.5),
           dict(kind="bible", name="bible", languages=["en", "es"], paired=True, weight=100)]
target_tokens = 6_000_000
collect_bytes_per_token = 0
