# A corpus from where text lives: Common Crawl (one WARC file of a 2018 crawl, ~1 GB), a few web
# pages fetched politely (the PEPs: public domain or CC0), Simple English Wikipedia, and permissively
# licensed repositories on GitHub (their Python and Markdown). Needs the network once; every download
# and clone is cached under data/, so a rerun reads the caches.
# python prepare.py config/prepare_web_mix.py
dataset = "web_mix"
target_tokens = 20_000_000
val_fraction = 0.005
vocab_size = 32_000
sources = [
    dict(kind="warc", name="common_crawl", extractor="resiliparse", weight=0.35,
         urls=["https://data.commoncrawl.org/crawl-data/CC-MAIN-2018-17/segments/1524125937193.1/"
               "warc/CC-MAIN-20180420081400-20180420101400-00000.warc.gz"]),
    dict(kind="web", name="peps", delay_seconds=2.0, weight=0.05,
         urls=[f"https://peps.python.org/pep-{n:04d}/" for n in (8, 20, 257, 484, 572, 3107)]),
    dict(kind="wiki_dump", name="wiki", weight=0.35,
         url="https://dumps.wikimedia.org/simplewiki/latest/simplewiki-latest-pages-articles.xml.bz2"),
    dict(kind="git", name="repos", languages=["python", "markdown"], weight=0.25,
         repos=["https://github.com/karpathy/nanoGPT", "https://github.com/karpathy/minbpe",
                "https://github.com/pallets/flask", "https://github.com/psf/requests"]),
]
