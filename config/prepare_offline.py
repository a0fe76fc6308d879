# The largest real corpus this machine holds without a network, for a GPU machine that reaches
# nothing outside it: every Python file of this interpreter's standard library and installed
# packages (torch, numpy, matplotlib ...; what is installed decides the size), plus the offline
# Wikipedia summaries. Mostly code: a model trained on it writes Python, not prose.
# python prepare.py config/prepare_offline.py   (no downloads)
dataset = "offline"
target_tokens = 1_000_000_000  # more than there is: keep everything that passes the filters
val_fraction = 0.01
vocab_size = 32_000  # the seed's tokenizer size, for config/mini_lm.py
sources = [
    dict(kind="files", name="code", paths=["stdlib", "site-packages"], extensions=[".py"],
         exclude=["test/*", "*/test/*", "tests/*", "*/tests/*", "*/idle_test/*", "*/__pycache__/*"],
         weight=0.9),
    dict(kind="wiki_offline", name="wiki_summaries", languages=["en", "es", "fr"], weight=0.1),
]
