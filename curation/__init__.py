"""The data pipeline behind prepare.py: sources, crawling, cleaning filters, dedup, curation, the
translation task's Bibles, the data report (the tokenizer it trains is core/tokenizer.py)."""
