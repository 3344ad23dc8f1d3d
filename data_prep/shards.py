"""The packed-shard format, owned here: what ``r1-ds prep`` writes and the one reader that prep and training use.

    DIR/meta.json        {"seq_len", "dtype": "uint16"|"uint32", "vocab_size", "eos_token_id", "num_sequences",
                          "min_token_id", "max_token_id", "checksum": {"algorithm", "chunks", "chunk_bytes"},
                          "shards": [{"file", "num_sequences", "min_token_id", "max_token_id", "sha256"}],
                          "tokenizer": "../tokenizer", "tokenizer_sha256", ...counts}
    DIR/shard_NNNNN.bin  raw little-endian C-order arrays (num_sequences, seq_len)

``PackedShards(dir)`` checks the folder on open, before any step trains on it: meta.json parses and has its
fields, each shard has the size meta.json implies, token ids lie below the vocabulary, and each shard's bytes
match its checksum. The checksum covers a fixed number of chunks spread over the file (the whole file when it is
small), and at most ``MAX_CHECKED_SHARDS`` shards spread over the folder are read, so opening a large corpus reads
a bounded number of bytes; a shard rewritten in place (e.g. with another dtype at the same size) changes every
chunk and is refused. Rows are memory-mapped, nothing is loaded up front.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from data_prep.errors import PrepError

META_FILE = "meta.json"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
CHECKSUM = {"algorithm": "sha256", "chunks": 4, "chunk_bytes": 1 << 16}
MAX_CHECKED_SHARDS = 64  # x 4 chunks x 64 KiB: opening reads at most 16 MiB of shard data
_REQUIRED = ("seq_len", "dtype", "vocab_size", "num_sequences", "shards", "max_token_id", "checksum")
_REPACK = "Fix: rerun `r1-ds prep --out OUT` on the run that wrote it (it rewrites the shards)"


class DataError(PrepError):
    """A data folder or data setting is unusable; the message names it, the rule it breaks and the fix."""


def dtype_name(vocab_size: int) -> str:
    """The smallest shard dtype that holds every token id of a vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def sampled_sha256(read: Callable[[int, int], bytes], size: int, *, chunks: int, chunk_bytes: int) -> str:
    """sha256 of the file size and ``chunks`` chunks of ``chunk_bytes`` spread from its start to its end (the
    whole file when it is not larger than that); ``read(offset, n)`` returns the bytes."""
    h = hashlib.sha256(size.to_bytes(8, "little"))
    if size <= chunks * chunk_bytes:
        h.update(read(0, size))
    else:
        for i in range(chunks):
            h.update(read(i * (size - chunk_bytes) // (chunks - 1), chunk_bytes))
    return h.hexdigest()


def shard_record(name: str, rows: np.ndarray) -> dict[str, Any]:
    """meta.json's entry for a shard about to be written as ``rows.tobytes()``."""
    data = memoryview(rows.tobytes(order="C"))
    return {
        "file": name,
        "num_sequences": int(rows.shape[0]),
        "min_token_id": int(rows.min()) if rows.size else 0,
        "max_token_id": int(rows.max()) if rows.size else 0,
        "sha256": sampled_sha256(lambda o, n: data[o : o + n], len(data), **_checksum_args(CHECKSUM)),
    }


def format_meta(
    shards: list[dict[str, Any]], *, seq_len: int, vocab_size: int, eos_token_id: int, tokenizer_file: str | os.PathLike
) -> dict[str, Any]:
    """The format's fields of meta.json for shards written with ``shard_record`` and a tokenizer in
    ``tokenizer_file``'s folder, which lies at ``../tokenizer`` from the shard folder."""
    used = [s for s in shards if s["num_sequences"]]
    return {
        "seq_len": seq_len,
        "dtype": dtype_name(vocab_size),
        "vocab_size": vocab_size,
        "eos_token_id": eos_token_id,
        "num_sequences": sum(s["num_sequences"] for s in shards),
        "min_token_id": min((s["min_token_id"] for s in used), default=0),
        "max_token_id": max((s["max_token_id"] for s in used), default=0),
        "checksum": CHECKSUM,
        "shards": shards,
        "tokenizer": "../tokenizer",
        "tokenizer_sha256": file_sha256(tokenizer_file),
    }


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_meta(shards_dir: str | os.PathLike) -> dict[str, Any]:
    """meta.json of a shard folder, checked for its fields; DataError naming the file otherwise."""
    meta_path = os.path.join(shards_dir, META_FILE)
    if not os.path.isfile(meta_path):
        raise DataError(
            f"{shards_dir}: no meta.json, so this is not a finished packed shard folder. Fix: point at OUT/shards "
            "of a completed `r1-ds prep --out OUT` run (it holds meta.json and shard_*.bin; rerun prep to finish "
            "an interrupted one), or leave data.path empty to train on synthetic data."
        )
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{meta_path}: not readable JSON ({err}). {_REPACK}.") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: must hold a JSON object, not {type(meta).__name__}. {_REPACK}.")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise DataError(f"{meta_path} lacks {missing} (written by an older or other packer). {_REPACK}.")
    if meta["dtype"] not in DTYPES:
        raise DataError(f"{meta_path}: dtype={meta['dtype']!r} must be 'uint16' or 'uint32'. {_REPACK}.")
    if not _checksum_args(meta["checksum"]):
        raise DataError(f"{meta_path}: unknown checksum scheme {meta['checksum']!r}. {_REPACK}.")
    return meta


def _checksum_args(scheme: Any) -> dict[str, int] | None:
    if not (isinstance(scheme, dict) and scheme.get("algorithm") == "sha256"):
        return None
    chunks, chunk_bytes = scheme.get("chunks"), scheme.get("chunk_bytes")
    if not (isinstance(chunks, int) and chunks >= 2 and isinstance(chunk_bytes, int) and chunk_bytes >= 1):
        return None
    return {"chunks": chunks, "chunk_bytes": chunk_bytes}


def _checked_indices(n: int, limit: int = MAX_CHECKED_SHARDS) -> list[int]:
    """Which of n shards get their checksum read: all, or `limit` spread from the first to the last."""
    if n <= limit:
        return list(range(n))
    return sorted({i * (n - 1) // (limit - 1) for i in range(limit)})


class PackedShards:
    """A checked, read-only view of a packed shard folder: ``len(ds)`` rows of ``ds.seq_len`` tokens.

    ``ds[i]`` is row i as int64 (seq_len,); ``ds.rows(indices, n)`` the first n tokens of several rows.
    """

    def __init__(self, shards_dir: str | os.PathLike):
        self.path = os.fspath(shards_dir)
        meta = self.meta = read_meta(self.path)
        meta_path = os.path.join(self.path, META_FILE)
        try:
            self.seq_len = int(meta["seq_len"])
            self.vocab_size = int(meta["vocab_size"])
            self.max_token_id = int(meta["max_token_id"])
            self.eos_token_id = None if meta.get("eos_token_id") is None else int(meta["eos_token_id"])
            records = [(str(s["file"]), int(s["num_sequences"]), s.get("sha256")) for s in meta["shards"]]
        except (TypeError, ValueError, KeyError) as err:
            raise DataError(f"{meta_path}: a field has the wrong type or is missing ({err!r}). {_REPACK}.") from None
        if self.max_token_id >= self.vocab_size:
            raise DataError(
                f"{meta_path}: max_token_id={self.max_token_id} is not below vocab_size={self.vocab_size}; token "
                f"ids must index the vocabulary. {_REPACK}."
            )
        self.dtype = DTYPES[meta["dtype"]]
        self._files: list[str] = []
        counts: list[int] = []
        for name, n, _ in records:
            file = os.path.join(self.path, name)
            expected = n * self.seq_len * self.dtype.itemsize
            size = os.path.getsize(file) if os.path.isfile(file) else "missing"
            if size != expected:
                raise DataError(
                    f"{file}: expected {expected} bytes per meta.json ({n} x {self.seq_len} {meta['dtype']}), "
                    f"found {size}: the folder is incomplete or was changed. {_REPACK}."
                )
            self._files.append(file)
            counts.append(n)
        self._verify_checksums(records, _checksum_args(meta["checksum"]) or {})
        self._counts = counts
        self._starts = np.cumsum([0] + counts)
        self._maps: dict[int, np.memmap] = {}
        if int(meta["num_sequences"]) != len(self):
            raise DataError(
                f"{meta_path}: num_sequences={meta['num_sequences']} but the shards hold {len(self)}. {_REPACK}."
            )
        tok = meta.get("tokenizer")
        tok_dir = os.path.normpath(os.path.join(self.path, tok)) if tok else None
        self.tokenizer_dir = tok_dir if tok_dir and os.path.isdir(tok_dir) else None

    def _verify_checksums(self, records: list[tuple[str, int, Any]], scheme: dict[str, int]) -> None:
        for k in _checked_indices(len(records)):
            file, expected = self._files[k], records[k][2]
            with open(file, "rb") as f:

                def read(offset: int, n: int) -> bytes:
                    f.seek(offset)
                    return f.read(n)

                got = sampled_sha256(read, os.fstat(f.fileno()).st_size, **scheme)
            if got != expected:
                raise DataError(
                    f"{file}: its bytes do not match the checksum in meta.json; a shard must hold exactly what "
                    f"prep wrote ({self.meta['dtype']} token ids), and this one was rewritten or damaged (e.g. "
                    f"with another dtype at the same size). {_REPACK}, or restore the file."
                )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, k: int) -> np.memmap:
        if k not in self._maps:
            self._maps[k] = np.memmap(self._files[k], dtype=self.dtype, mode="r", shape=(self._counts[k], self.seq_len))
        return self._maps[k]

    def __getitem__(self, i: int) -> np.ndarray:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"PackedShards index must be an int, got {type(i).__name__}")
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        k = bisect.bisect_right(self._starts, i) - 1
        return np.array(self._shard(k)[i - self._starts[k]], dtype=np.int64)  # (seq_len,)

    def rows(self, indices: np.ndarray, seq_len: int) -> np.ndarray:
        """Rows ``indices``, first ``seq_len`` tokens each, as int64 (n, seq_len)."""
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        return np.stack([self._shard(k)[i - self._starts[k], :seq_len] for k, i in zip(shard, indices)]).astype(
            np.int64
        )

    def batch(self, indices: np.ndarray, seq_len: int):
        """``rows`` as a torch int64 tensor (n, seq_len), what the trainer feeds the model."""
        import torch  # the trainer's need; prep reads rows without loading torch

        return torch.from_numpy(self.rows(indices, seq_len))
