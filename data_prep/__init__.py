"""Data preparation for r1_ds: text / code / image corpora to tokenizer, packed shards and triples.

Importing this package is cheap: model-backed parts (transformers, open_clip, torch) load lazily.
Entry point: ``python -m data_prep`` (or ``r1-ds prep``); see docs/data.md.
"""
