"""The data pipeline behind prepare.py: sources, cleaning filters, dedup, curation, BPE tokenizer, data report."""
