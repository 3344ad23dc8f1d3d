"""The unit that flows through every pipeline: one text document, one source file or one image-caption pair."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

TEXT, CODE, IMAGE = "text", "code", "image"
MODALITIES = (TEXT, CODE, IMAGE)

# What a filter returns: True keeps, False drops with the filter's default reason, (False, reason) drops with reason.
FilterResult = Union[bool, "tuple[bool, str]"]


@dataclass
class Document:
    """One input item. Readers create it; filters read it, may rewrite ``text`` and add labels to ``metadata``."""

    id: str
    """Stable id built from the source (``file:line``, relative path, tar member key); unique within a run."""
    text: str
    """Prose for text, source code for code, the caption for an image-caption pair."""
    modality: str
    """One of ``text``, ``code``, ``image``."""
    source: str = ""
    """Where the item came from (a path, a path plus line number, a tar member)."""
    data: bytes | None = None
    """Raw bytes that are not text: the encoded image file for image pairs, else None."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Labels written by readers and filters (language, entropy, quality score, CLIP cosine, read errors)."""
    position: int = 0
    """Index in its task's input, set by the engine's reader: model filters get the survivors of each part of
    ``part_size`` input documents as one batch, whatever the filters before them dropped."""


def normalize_result(result: FilterResult, default_reason: str) -> tuple[bool, str | None]:
    """Turn a filter's return value into (keep, reason); reason is None when kept."""
    if isinstance(result, tuple):
        keep, reason = result
        return bool(keep), (None if keep else (reason or default_reason))
    return bool(result), (None if result else default_reason)
