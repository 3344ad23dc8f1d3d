"""Filters: one per file. Each has ``name`` and ``filter(doc) -> bool | (False, reason)``.

Model-backed filters implement ``filter_batch(docs)`` and load their model on first use.
"""

from data_prep.filters.base import BaseFilter

__all__ = ["BaseFilter"]
