"""Exact deduplication: drop a document whose content hash was seen before in this run (first one wins).

Text and code hash their text; image pairs hash the image bytes plus the caption, so one image with two different
captions stays as two pairs. The set of hashes survives a crash: each committed part records the hashes it added.
"""

from __future__ import annotations

import hashlib

from data_prep.document import Document, FilterResult
from data_prep.filters.base import BaseFilter


def content_hash(doc: Document) -> str:
    h = hashlib.sha1(doc.text.encode("utf-8", "surrogatepass"))
    if doc.data is not None:
        h.update(b"\0")
        h.update(doc.data)
    return h.hexdigest()


class ExactDedupFilter(BaseFilter):
    name = "exact_dedup"

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._new: list[str] = []

    def filter(self, doc: Document) -> FilterResult:
        key = content_hash(doc)
        doc.metadata["sha1"] = key
        if key in self._seen:
            return False, "duplicate"
        self._seen.add(key)
        self._new.append(key)
        return True

    def state_delta(self) -> list[str]:
        new, self._new = self._new, []
        return new

    def load_state(self, delta: list[str] | None) -> None:
        if delta:
            self._seen.update(delta)
