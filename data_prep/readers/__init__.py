"""Readers turn inputs into Documents and never raise on bad content: a bad item becomes a Document with
``metadata['read_error'] = reason`` that the ``read`` stage drops, so every input is accounted for.
Missing paths are user errors and raise PrepError before any work starts (``check_paths``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from data_prep.errors import PrepError


def check_paths(flag: str, paths: Iterable[str | Path], hint: str) -> list[Path]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise PrepError(f"{flag} {p}: path does not exist; {hint}")
        out.append(path)
    return out
