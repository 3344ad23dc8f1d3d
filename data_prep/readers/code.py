"""Source trees: every file under the given folders is one input (VCS and cache folders are skipped)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from data_prep.document import CODE, Document
from data_prep.filters.read_error import READ_ERROR_KEY
from data_prep.readers import _files


def iter_code_documents(
    paths: Iterable[Path], *, max_file_bytes: int = 1 << 20, exclude: tuple[Path, ...] = ()
) -> Iterator[Document]:
    """One Document per file; binary, non-UTF-8 and oversized files become dropped items with their reason."""
    for root in paths:
        for path in _files.walk_files(root, exclude):
            yield code_document(path, _files.rel_id(path, root), max_file_bytes)


def code_document(path: Path, rel: str, max_file_bytes: int = 1 << 20) -> Document:
    """One source file (``rel``: its id); shared with the engine's reader."""
    text, err = _files.read_text_file(path, max_file_bytes)
    meta = {"path": rel}
    if err:
        meta[READ_ERROR_KEY] = err
    return Document(id=rel, text=text or "", modality=CODE, source=str(path), metadata=meta)
