"""Drop empty and huge documents before any other work."""

from __future__ import annotations

from data_prep.document import Document, FilterResult
from data_prep.filters.base import BaseFilter


class LengthFilter(BaseFilter):
    name = "length"

    def __init__(self, *, min_chars: int = 1, max_chars: int = 1_000_000):
        self.min_chars = min_chars
        """Documents with fewer characters (after stripping whitespace) are dropped as ``too_short``."""
        self.max_chars = max_chars
        """Documents longer than this are dropped as ``too_long`` (protects every later stage)."""

    def filter(self, doc: Document) -> FilterResult:
        text = doc.text
        if len(text) > self.max_chars:
            return False, "too_long"
        if not text or text.isspace():
            return False, "empty"
        if self.min_chars > 1 and len(text.strip()) < self.min_chars:
            return False, "too_short"
        return True
