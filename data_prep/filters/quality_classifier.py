"""Model filter: the BERT-style quality head (see data_prep/quality_head.py); keeps int score >= threshold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.document import Document, FilterResult
from data_prep.filters.base import BaseFilter


class QualityClassifierFilter(BaseFilter):
    name = "quality_classifier"
    batched = True

    def __init__(self, head_dir: str | Path, *, threshold: float = 3.0, batch_size: int = 32, device: str = "auto"):
        self.head_dir = str(head_dir)
        """Folder written by ``train_quality_head``."""
        self.threshold = threshold
        """Keep documents with ``int(round(clip(score, 0, 5))) >= threshold`` (FineWeb-Edu keeps >= 3)."""
        self.batch_size = batch_size
        """Documents per encoder forward pass."""
        self.device = device
        """auto, cpu, cuda or cuda:N."""
        self._head: Any = None

    def filter_batch(self, docs: Sequence[Document]) -> list[FilterResult]:
        if self._head is None:
            from data_prep.quality_head import QualityHead

            self._head = QualityHead(self.head_dir, device=self.device, batch_size=self.batch_size)
        results: list[FilterResult] = []
        for doc, score in zip(docs, self._head.scores([d.text for d in docs])):
            int_score = int(round(min(max(score, 0.0), 5.0)))
            doc.metadata["quality_score"] = round(score, 4)
            doc.metadata["quality_int_score"] = int_score
            results.append(True if int_score >= self.threshold else (False, "low_quality_score"))
        return results

    def filter(self, doc: Document) -> FilterResult:
        return self.filter_batch([doc])[0]
