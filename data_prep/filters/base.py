"""The filter protocol, datatrove style: a small class with a ``name`` and ``filter(doc)``.

``filter`` returns True to keep, or ``(False, reason)`` to drop; the pipeline counts reasons and writes the
dropped document aside. Model-backed filters set ``batched = True`` and implement ``filter_batch``; the
pipeline then hands them all surviving documents of a part at once and they micro-batch internally.
Filters with state that must survive a crash (deduplication) implement ``state_delta`` / ``load_state``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from data_prep.document import Document, FilterResult


class BaseFilter:
    name: str = "base"
    """Stage name used in stats.json and rejects; unique within a pipeline."""
    batched: bool = False
    """True for filters that score whole batches (model filters); the pipeline then calls ``filter_batch``."""

    def filter(self, doc: Document) -> FilterResult:
        raise NotImplementedError

    def filter_batch(self, docs: Sequence[Document]) -> list[FilterResult]:
        return [self.filter(doc) for doc in docs]

    # Resumable state (only exact dedup uses it). ``state_delta`` returns what changed since the last call,
    # JSON-serialisable; a resumed run replays the deltas of committed parts with ``load_state``.
    def state_delta(self) -> Any:
        return None

    def load_state(self, delta: Any) -> None:
        return None

    def config(self) -> dict[str, Any]:
        """Settings recorded in stats.json; default: the public attributes set in ``__init__``."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"
