"""FineWeb's extra rules (Penedo et al. 2024) with datatrove's FineWebQualityFilter defaults."""

from __future__ import annotations

from data_prep.document import Document, FilterResult
from data_prep.filters import _text
from data_prep.filters.base import BaseFilter

# Line-ending punctuation; datatrove uses a longer multilingual list, this covers Latin and CJK text.
TERMINAL_PUNCTUATION = (".", "!", "?", "…", '"', "'", "。", "！", "？", "”", "’")


class FineWebQualityFilter(BaseFilter):
    name = "fineweb_quality"

    def __init__(
        self,
        *,
        line_punct_thr: float = 0.12,
        short_line_thr: float = 0.67,
        short_line_length: int = 30,
        char_duplicates_ratio: float = 0.01,
        new_line_ratio: float = 0.3,
    ):
        self.line_punct_thr = line_punct_thr
        """Min share of non-empty lines ending in terminal punctuation (``line_punct_ratio``)."""
        self.short_line_thr = short_line_thr
        """Max share of lines of at most ``short_line_length`` characters (``short_line_ratio``)."""
        self.short_line_length = short_line_length
        """A line this short or shorter counts as short."""
        self.char_duplicates_ratio = char_duplicates_ratio
        """Max characters in duplicated lines / all non-newline characters (``char_dup_ratio``)."""
        self.new_line_ratio = new_line_ratio
        """Max newlines per word (``list_ratio``): catches lists and menus."""

    def filter(self, doc: Document) -> FilterResult:
        text = doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return False, "empty"
        n = len(lines)
        if sum(1 for line in lines if line.endswith(TERMINAL_PUNCTUATION)) / n < self.line_punct_thr:
            return False, "line_punct_ratio"
        if sum(1 for line in lines if len(line) <= self.short_line_length) / n > self.short_line_thr:
            return False, "short_line_ratio"
        n_newlines = text.count("\n")
        n_chars = len(text) - n_newlines
        if _text.find_duplicates(lines)[1] / max(n_chars, 1) > self.char_duplicates_ratio:
            return False, "char_dup_ratio"
        n_words = len(_text.split_words(text))
        if n_newlines / max(n_words, 1) > self.new_line_ratio:
            return False, "list_ratio"
        return True
