"""Deterministic directory walks and safe file reads shared by the readers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from data_prep.atomic import TMP_PREFIX

SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".tox", ".mypy_cache"})
BINARY_SNIFF_BYTES = 8192


def walk_files(root: Path, exclude: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Files under ``root`` in sorted order (reproducible part boundaries), skipping VCS/cache folders and the
    folders in ``exclude`` (the prep output folder: its contents grow during a run and must never be inputs)."""
    if root.is_file():
        yield root
        return
    excluded = {p.resolve() for p in exclude}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_DIRS
            and not d.startswith(TMP_PREFIX)  # a crashed atomic write's leftovers
            and (not excluded or (Path(dirpath) / d).resolve() not in excluded)
        )
        for name in sorted(filenames):
            yield Path(dirpath) / name


def read_text_file(path: Path, max_bytes: int) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason): ``file_too_large``, ``unreadable``, ``binary``, ``non_utf8``."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return None, "file_too_large"
        data = path.read_bytes()
    except OSError:
        return None, "unreadable"
    return decode_text(data)


def decode_text(data: bytes) -> tuple[str | None, str | None]:
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "non_utf8"
    return text.removeprefix("\ufeff"), None


def rel_id(path: Path, root: Path) -> str:
    """``root-name/relative/path``: stable across machines, unique across roots with different names."""
    if root.is_file():
        return root.name
    return f"{root.name}/{path.relative_to(root).as_posix()}"
