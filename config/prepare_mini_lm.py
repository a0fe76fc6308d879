# The ~100M-token corpus for config/mini_lm.py: Simple English Wikipedia + Python code.
# python prepare.py config/prepare_mini_lm.py   (downloads ~330 MB once into data/downloads/)
dataset = "mini_lm"
target_tokens = 100_000_000
val_fraction = 0.005
vocab_size = 32_000  # the seed's tokenizer size, for config/mini_lm.py
sources = [
    dict(kind="wiki_dump", name="wiki",
         url="https://dumps.wikimedia.org/simplewiki/latest/simplewiki-latest-pages-articles.xml.bz2",
         weight=0.65),
    dict(kind="wiki_offline", name="wiki_summaries", languages=["en", "es", "fr"], weight=0.05),
    # the standard library plus every installed package's Python source (torch, numpy, matplotlib ...)
    dict(kind="files", name="code", paths=["stdlib", "site-packages"], extensions=[".py"],
         exclude=["test/*", "*/test/*", "tests/*", "*/tests/*", "*/idle_test/*", "*/__pycache__/*"],
         weight=0.3),
]
