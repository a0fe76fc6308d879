# The CPU demo's corpus with the translation task's Bibles added to it (issue: where should the
# task's text come in?): the demo's sources at their shares, plus every chapter of the books the
# task trains on (never Acts, its validation books, Mark or Hebrews), one document per chapter and
# language. paired=True instead writes each verse in both languages. The bible source's weight is
# above its share of any budget, so all of it goes in; target_tokens is the demo's 4M plus it,
# and every source is collected whole (the demo's collection cap would stop the others at their
# tiny share by weight).
# python prepare.py config/prepare_bible_mix.py
# python train.py config/cpu_demo.py --dataset=demo_bible --out_dir=out/bible
dataset = "demo_bible"
sources = [dict(kind="files", name="code", paths=["stdlib"], extensions=[".py"], weight=0.5),
           dict(kind="wiki_offline", name="wiki", languages=["en", "es", "fr"], weight=0.5),
           dict(kind="bible", name="bible", languages=["en", "es"], paired=False, weight=100)]
target_tokens = 6_000_000
collect_bytes_per_token = 0
