"""Checks on the caption of an image-caption pair (the image itself is checked by ImageDecodeFilter)."""

from __future__ import annotations

from data_prep.document import Document, FilterResult
from data_prep.filters.base import BaseFilter


class CaptionFilter(BaseFilter):
    name = "caption"

    def __init__(self, *, min_words: int = 1, max_chars: int = 1000):
        self.min_words = min_words
        """Captions with fewer words are dropped (``empty_caption`` when there are none, else ``short_caption``)."""
        self.max_chars = max_chars
        """Longer captions are dropped (``caption_too_long``): CLIP's text tower sees 77 tokens anyway."""

    def filter(self, doc: Document) -> FilterResult:
        caption = doc.text.strip()
        n_words = len(caption.split())
        if n_words == 0:
            return False, "empty_caption"
        if n_words < self.min_words:
            return False, "short_caption"
        if len(caption) > self.max_chars:
            return False, "caption_too_long"
        doc.text = caption
        return True
