"""The engine's inputs. Text through fsspec: local files and folders, globs, remote URLs (``s3://``, ``hf://``,
``https://``, any protocol whose fsspec package is installed), each file optionally compressed (``.gz``, ``.zst``,
``.bz2``, ``.xz``). Code: local source trees, every file one input. Images: each folder, manifest or tar is one
input (a folder pairs images with sidecar captions, a manifest names files anywhere, so they are not split).

Local files and folders are listed by a sorted walk and parsed by the readers of data_prep/readers, so ids,
sources and order do not depend on how the files are split into tasks.
"""

from __future__ import annotations

import io
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_prep.document import CODE, IMAGE, TEXT, Document
from data_prep.errors import PrepError
from data_prep.readers import _files
from data_prep.readers import text as text_reader
from data_prep.readers.code import code_document

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".xz": "xz"}
MAX_PLAIN_BYTES = 64 << 20


@dataclass(frozen=True)
class InputFile:
    path: str
    """Local path or URL (with its protocol)."""
    rel: str
    """Id prefix: ``root-name/relative/path``, as data_prep/readers builds it."""
    size: int
    """Bytes on disk (compressed), for balancing tasks and the ETA."""


def _is_url(spec: str) -> bool:
    return "://" in spec


def _has_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def check_inputs(flag: str, specs: list[str]) -> None:
    """Each spec must exist (a file, a folder, a glob with at least one match, or a reachable URL)."""
    for spec in specs:
        if not _is_url(spec) and not _has_glob(spec):
            if not Path(spec).exists():
                raise PrepError(f"{flag} {spec}: path does not exist; pass an existing file, folder, glob or URL")
            continue
        try:
            found = bool(_list_fsspec(spec))
        except Exception as exc:  # noqa: BLE001 - a missing protocol package, credentials, network: one message
            raise PrepError(
                f"{flag} {spec}: cannot be listed through fsspec ({exc}); check the URL, the protocol's "
                "package (e.g. s3fs for s3://) and its credentials"
            ) from exc
        if not found:
            raise PrepError(f"{flag} {spec}: matches no file; fix the pattern or the URL")


def list_inputs(specs: list[str], exclude: tuple[Path, ...] = (), modality: str = TEXT) -> list[InputFile]:
    """Every input file in the reader's order: specs in the given order, files sorted within each. Image inputs
    stay whole (a folder pairs images with sidecar captions, a manifest names files anywhere): one unit each."""
    files: list[InputFile] = []
    for spec in specs:
        if modality == IMAGE:
            root = Path(spec)
            size = sum(p.stat().st_size for p in _files.walk_files(root, exclude)) if root.is_dir() else 0
            files.append(InputFile(spec, root.name, size or (root.stat().st_size if root.is_file() else 0)))
            continue
        if _is_url(spec) or _has_glob(spec):
            files.extend(_list_fsspec(spec))
            continue
        root = Path(spec)
        for path in _files.walk_files(root, exclude):
            files.append(InputFile(str(path), _files.rel_id(path, root), path.stat().st_size))
    return files


def _list_fsspec(spec: str) -> list[InputFile]:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(spec)
    if _has_glob(root):
        base = root[: min(root.index(c) for c in "*?[" if c in root)].rsplit("/", 1)[0]
        paths = sorted(fs.glob(root))
    elif fs.isdir(root):
        base, paths = root, sorted(fs.find(root))
    else:
        base, paths = root.rsplit("/", 1)[0], [root]
    top = base.rstrip("/").rsplit("/", 1)[-1]
    out = []
    for p in paths:
        info = fs.info(p)
        if info.get("type") == "directory":
            continue
        rel = p[len(base) :].lstrip("/") if p.startswith(base) else p.rsplit("/", 1)[-1]
        # URLs keep their protocol (fsspec's canonical form); local globs stay plain paths
        path = fs.unstrip_protocol(p) if _is_url(spec) else p
        out.append(InputFile(path, f"{top}/{rel}" if top else rel, int(info.get("size") or 0)))
    return out


def _kind(name: str) -> tuple[str | None, str | None]:
    """(kind, fsspec compression) from the file name: ``x.jsonl.zst`` -> (jsonl, zstd)."""
    lower = name.lower()
    compression = next((c for s, c in COMPRESSIONS.items() if lower.endswith(s)), None)
    if compression:
        lower = lower.rsplit(".", 1)[0]
    for kind, suffixes in (("jsonl", (".jsonl", ".ndjson")), ("parquet", (".parquet",)), ("plain", (".txt", ".md"))):
        if lower.endswith(suffixes):
            return kind, compression
    return None, compression


def _stream_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [lzma.LZMAError, ValueError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def iter_input_documents(
    f: InputFile, *, text_field: str, id_field: str | None, modality: str = TEXT, exclude: tuple[Path, ...] = ()
) -> Iterator[Document]:
    """The documents of one input file; bad content becomes dropped items. Code inputs are local source trees
    (every file one document); image inputs are whole folders, manifests or tars (data_prep/readers/image.py)."""
    if modality == CODE:
        yield code_document(Path(f.path), f.rel)
        return
    if modality == IMAGE:
        from data_prep.readers.image import iter_image_documents

        yield from iter_image_documents([Path(f.path)], exclude=exclude)
        return
    local = not _is_url(f.path) and Path(f.path).exists()
    if local and not f.path.lower().endswith(tuple(COMPRESSIONS)):
        # Uncompressed local files: the local reader itself (one code path for parsing).
        yield from text_reader.iter_file_documents(Path(f.path), f.rel, text_field, id_field, MAX_PLAIN_BYTES)
        return
    import fsspec

    kind, compression = _kind(f.path)
    opener = fsspec.open(f.path, "rb", compression=compression)
    if kind == "jsonl":
        # zstandard's reader has no line iteration of its own: a buffer on top gives it
        open_file = (lambda: io.BufferedReader(opener.open())) if compression == "zstd" else opener.open
        yield from text_reader._iter_jsonl(
            f.path, f.rel, text_field, id_field, open_file=open_file, stream_errors=_stream_errors()
        )
    elif kind == "plain":
        try:
            with opener as fh:
                data = fh.read(MAX_PLAIN_BYTES + 1)
        except (OSError, EOFError, *_stream_errors()):
            yield text_reader._bad(f.rel, f.path, "truncated_file")
            return
        text, err = (None, "file_too_large") if len(data) > MAX_PLAIN_BYTES else _files.decode_text(data)
        yield (
            text_reader._bad(f.rel, f.path, err)
            if err
            else Document(id=f.rel, text=text, modality="text", source=f.path)
        )
    elif kind == "parquet":
        with opener as fh:
            yield from text_reader._iter_parquet(fh, f.rel, text_field, id_field, source=f.path)
    else:
        yield text_reader._bad(f.rel, f.path, "unsupported_file")
