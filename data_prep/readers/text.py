"""Text inputs: JSONL (optionally .gz), Parquet, and folders of .txt / .md / .jsonl / .parquet files."""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from data_prep.document import TEXT, Document
from data_prep.filters.read_error import READ_ERROR_KEY
from data_prep.readers import _files

log = logging.getLogger(__name__)

PLAIN_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for kind, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES), ("plain", PLAIN_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def _bad(doc_id: str, source: str, reason: str) -> Document:
    return Document(id=doc_id, text="", modality=TEXT, source=source, metadata={READ_ERROR_KEY: reason})


def iter_text_documents(
    paths: Iterable[Path],
    *,
    text_field: str = "text",
    id_field: str | None = None,
    max_file_bytes: int = 64 << 20,
    exclude: tuple[Path, ...] = (),
) -> Iterator[Document]:
    """One Document per JSONL line / Parquet row / plain-text file, in a reproducible order."""
    for root in paths:
        for path in _files.walk_files(root, exclude):
            yield from iter_file_documents(path, _files.rel_id(path, root), text_field, id_field, max_file_bytes)


def iter_file_documents(
    path: Path, rel: str, text_field: str, id_field: str | None, max_file_bytes: int = 64 << 20
) -> Iterator[Document]:
    """The documents of one local file (``rel``: its id prefix)."""
    kind = _kind(path)
    if kind is None:
        yield _bad(rel, str(path), "unsupported_file")
    elif kind == "plain":
        text, err = _files.read_text_file(path, max_file_bytes)
        if err:
            yield _bad(rel, str(path), err)
        else:
            yield Document(id=rel, text=text, modality=TEXT, source=str(path))
    elif kind == "jsonl":
        yield from _iter_jsonl(path, rel, text_field, id_field)
    else:
        yield from _iter_parquet(path, rel, text_field, id_field)


def _iter_jsonl(
    path: Path | str,
    rel: str,
    text_field: str,
    id_field: str | None,
    open_file: Callable[[], IO[bytes]] | None = None,
    stream_errors: tuple[type[BaseException], ...] = (),
) -> Iterator[Document]:
    """``open_file`` (default: open or gzip.open by suffix) lets the engine read through fsspec; ``stream_errors``
    are its decompressors' errors, which also mean a truncated file."""
    if open_file is None:
        opener = gzip.open if str(path).lower().endswith(".gz") else open
        open_file = lambda: opener(path, "rb")  # noqa: E731
    lineno = 0
    try:
        f = open_file()
    except OSError:
        yield _bad(rel, str(path), "unreadable")
        return
    try:
        with f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue  # blank separator lines are not records
                yield _jsonl_record(raw, f"{rel}:{lineno}", f"{path}:{lineno}", text_field, id_field)
    except (OSError, EOFError, zlib.error, *stream_errors) as exc:
        # A truncated or corrupt (compressed) file: what was read is kept, the rest is one dropped item.
        log.warning("text reader: %s is truncated or corrupt after line %d (%s)", path, lineno, exc)
        yield _bad(f"{rel}:{lineno + 1}", f"{path}:{lineno + 1}", "truncated_file")


def _jsonl_record(raw: bytes, doc_id: str, source: str, text_field: str, id_field: str | None) -> Document:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _bad(doc_id, source, "non_utf8")
    try:
        rec = json.loads(line)
    except ValueError:
        return _bad(doc_id, source, "bad_json")
    if not isinstance(rec, dict):
        return _bad(doc_id, source, "bad_json")
    if text_field not in rec or rec[text_field] is None:
        return _bad(doc_id, source, "missing_field")
    text = rec[text_field]
    if not isinstance(text, str):
        return _bad(doc_id, source, "bad_field_type")
    if id_field and rec.get(id_field) is not None:
        doc_id = str(rec[id_field])
    meta = {k: v for k, v in rec.items() if k not in (text_field, id_field) and isinstance(v, (str, int, float, bool))}
    return Document(id=doc_id, text=text, modality=TEXT, source=source, metadata=meta)


def _iter_parquet(
    path: Path | IO[bytes], rel: str, text_field: str, id_field: str | None, source: str | None = None
) -> Iterator[Document]:
    """``path`` may be an open file (the engine reads remote and compressed files through fsspec); ``source``
    then names it in the documents' sources."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = source or path
    row = 0
    try:
        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            yield _bad(rel, str(name), "missing_field")
            return
        columns = [text_field] + ([id_field] if id_field and id_field in pf.schema_arrow.names else [])
        for batch in pf.iter_batches(columns=columns, batch_size=1024):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, rid in zip(texts, ids):
                doc_id = str(rid) if rid is not None else f"{rel}:{row}"
                source = f"{name}:{row}"
                row += 1
                if text is None:
                    yield _bad(doc_id, source, "missing_field")
                elif not isinstance(text, str):
                    yield _bad(doc_id, source, "bad_field_type")
                else:
                    yield Document(id=doc_id, text=text, modality=TEXT, source=source)
    except (OSError, pa.ArrowException) as exc:
        log.warning("text reader: %s is not a readable Parquet file after row %d (%s)", name, row, exc)
        yield _bad(f"{rel}:{row}", f"{name}:{row}", "corrupt_file")
