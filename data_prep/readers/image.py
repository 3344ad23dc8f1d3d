"""Image-caption inputs: folders (image + sidecar ``.txt`` caption), manifests (CSV / JSONL of paths and captions,
optionally with ``code`` and ``code_language`` for triples) and WebDataset-style ``.tar`` shards
(``key.png`` + ``key.txt`` or ``key.json`` with a ``caption``/``text`` field).

Images are not decoded here (ImageDecodeFilter does that); the reader only gets bytes and captions.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from data_prep.document import IMAGE, Document
from data_prep.filters.read_error import READ_ERROR_KEY
from data_prep.readers import _files

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
CAPTION_FIELDS = ("caption", "text", "txt")
IMAGE_FIELDS = ("image", "path", "file")


def _pair(
    doc_id: str, source: str, caption: str, data: bytes | None, meta: dict[str, Any], error: str | None
) -> Document:
    if error:
        meta[READ_ERROR_KEY] = error
    return Document(id=doc_id, text=caption, modality=IMAGE, source=source, data=data, metadata=meta)


def _read_bytes(path: Path, max_bytes: int) -> tuple[bytes | None, str | None]:
    try:
        if not path.is_file():
            return None, "missing_file"
        if path.stat().st_size > max_bytes:
            return None, "file_too_large"
        return path.read_bytes(), None
    except OSError:
        return None, "unreadable"


def iter_image_documents(
    paths: Iterable[Path], *, max_file_bytes: int = 32 << 20, exclude: tuple[Path, ...] = ()
) -> Iterator[Document]:
    for root in paths:
        name = root.name.lower()
        if root.is_dir():
            yield from _iter_folder(root, max_file_bytes, exclude)
        elif name.endswith(".tar"):
            yield from _iter_tar(root, max_file_bytes)
        elif name.endswith((".jsonl", ".csv")):
            yield from _iter_manifest(root, max_file_bytes)
        else:
            yield _pair(root.name, str(root), "", None, {}, "unsupported_file")


def _iter_folder(root: Path, max_bytes: int, exclude: tuple[Path, ...]) -> Iterator[Document]:
    for path in _files.walk_files(root, exclude):
        rel = _files.rel_id(path, root)
        suffix = path.suffix.lower()
        if suffix == ".txt" and any(
            path.with_suffix(s).exists() or path.with_suffix(s.upper()).exists() for s in IMAGE_SUFFIXES
        ):
            continue  # a sidecar caption, consumed with its image
        if suffix not in IMAGE_SUFFIXES:
            yield _pair(rel, str(path), "", None, {}, "unsupported_file")
            continue
        data, err = _read_bytes(path, max_bytes)
        caption, cap_err = "", None
        sidecar = path.with_suffix(".txt")
        if not sidecar.is_file():
            cap_err = "missing_caption"
        else:
            caption, cap_err = _files.read_text_file(sidecar, 1 << 20)
            caption = caption or ""
        yield _pair(rel, str(path), caption, data, {"image_path": rel, "image_ext": suffix}, err or cap_err)


def _iter_manifest(manifest: Path, max_bytes: int) -> Iterator[Document]:
    base = manifest.parent
    for row_id, rec, err in _manifest_rows(manifest):
        source = f"{manifest}:{row_id}"
        doc_id = f"{manifest.name}:{row_id}"
        if err:
            yield _pair(doc_id, source, "", None, {}, err)
            continue
        if rec.get("id"):
            doc_id = str(rec["id"])
        image = next((rec[k] for k in IMAGE_FIELDS if rec.get(k)), None)
        caption = next((rec[k] for k in CAPTION_FIELDS if isinstance(rec.get(k), str)), None)
        meta: dict[str, Any] = {}
        for key in ("code", "code_language"):
            if isinstance(rec.get(key), str) and rec[key]:
                meta[key] = rec[key]
        if not isinstance(image, str):
            yield _pair(doc_id, source, caption or "", None, meta, "missing_field")
            continue
        path = Path(image) if Path(image).is_absolute() else base / image
        meta.update(image_path=image, image_ext=path.suffix.lower())
        data, read_err = _read_bytes(path, max_bytes)
        yield _pair(
            doc_id, source, caption or "", data, meta, read_err or (None if caption is not None else "missing_caption")
        )


def _manifest_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """(row number, record, error) for each row; decoding errors become per-row errors."""
    try:
        raw = manifest.read_bytes()
    except OSError:
        yield 0, {}, "unreadable"
        return
    if manifest.name.lower().endswith(".csv"):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            yield 0, {}, "non_utf8"
            return
        try:
            for i, rec in enumerate(csv.DictReader(io.StringIO(text)), 1):
                yield i, {k: v for k, v in rec.items() if k}, None
        except csv.Error:
            yield -1, {}, "bad_csv"
        return
    for i, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield i, {}, "non_utf8"
            continue
        except ValueError:
            yield i, {}, "bad_json"
            continue
        yield (i, rec, None) if isinstance(rec, dict) else (i, {}, "bad_json")


def _iter_tar(path: Path, max_bytes: int) -> Iterator[Document]:
    """WebDataset convention: members sharing a key (path up to the first '.' of the basename) form one sample."""
    group_key: str | None = None
    group: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:") as tar:  # plain tar, as WebDataset shards are
            for member in tar:
                if not member.isfile():
                    continue
                dirname, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = f"{dirname}/{stem}" if dirname else stem
                if key != group_key and group_key is not None:
                    yield _tar_sample(path, group_key, group)
                    group = {}
                group_key = key
                if member.size > max_bytes:
                    group[ext.lower()] = b""
                    group["__too_large__"] = b"1"
                    continue
                f = tar.extractfile(member)
                group[ext.lower()] = f.read() if f else b""
            end = tar.offset
        if _has_trailing_data(path, end):
            # tarfile stops silently at a cut-off header; anything but zero padding after the last member is a cut
            raise tarfile.ReadError(f"unexpected data after the last complete member (offset {end})")
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("image reader: %s is truncated or corrupt (%s)", path, exc)
        if group_key is not None and group:
            yield _tar_sample(path, group_key, group)
            group_key, group = None, {}
        yield _pair(f"{path.name}:corrupt", str(path), "", None, {}, "corrupt_archive")
    if group_key is not None and group:
        yield _tar_sample(path, group_key, group)


def _has_trailing_data(path: Path, offset: int) -> bool:
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            if chunk.strip(b"\0"):
                return True
    return False


def _tar_sample(path: Path, key: str, group: dict[str, bytes]) -> Document:
    doc_id, source = f"{path.name}:{key}", f"{path}:{key}"
    image_ext = next((e for e in group if "." + e in IMAGE_SUFFIXES), None)
    meta: dict[str, Any] = {"image_path": f"{path.name}:{key}.{image_ext}" if image_ext else None}
    if "__too_large__" in group:
        return _pair(doc_id, source, "", None, meta, "file_too_large")
    caption: str | None = None
    if "txt" in group:
        caption, err = _files.decode_text(group["txt"])
        if err:
            return _pair(doc_id, source, "", None, meta, err)
    elif "json" in group:
        try:
            rec = json.loads(group["json"].decode("utf-8"))
            caption = next((rec[k] for k in CAPTION_FIELDS if isinstance(rec.get(k), str)), None)
            for k in ("code", "code_language"):
                if isinstance(rec.get(k), str):
                    meta[k] = rec[k]
        except (UnicodeDecodeError, ValueError, AttributeError):
            return _pair(doc_id, source, "", None, meta, "bad_json")
    if image_ext is None:
        return _pair(doc_id, source, caption or "", None, meta, "missing_image")
    meta["image_ext"] = "." + image_ext
    return _pair(
        doc_id, source, caption or "", group[image_ext], meta, None if caption is not None else "missing_caption"
    )
