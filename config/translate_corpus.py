# The translator's pretraining text (python bench.py translate, stage "corpus"): the translation
# task's training books of both Bibles, each aligned verse in English and in Spanish (English first
# in odd chapters), and nothing else; the tokenizer learns both languages from it. Acts, the
# validation books, Mark and Hebrews are never in it (prepare.py checks by content).
dataset = "translate_corpus"
sources = [dict(kind="bible", name="bible", languages=["en", "es"], paired=True, weight=1.0)]
target_tokens = 100_000_000  # all of it (about 1.5M tokens)
collect_bytes_per_token = 0
vocab_size = 8192
