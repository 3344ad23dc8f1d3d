"""Read packed training shards: ``PackedShards(dir)[i]`` is row i as an int64 array of length ``seq_len``.

The layout is described in data_prep/packing.py and docs/data.md; the files are memory-mapped, nothing is loaded
up front.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.errors import PrepError

_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class PackedShards:
    def __init__(self, shards_dir: str | Path):
        self.dir = Path(shards_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise PrepError(
                f"{self.dir}: no meta.json, so this is not a finished shard folder; "
                "point at OUT/shards of a completed `r1-ds prep --out OUT` run (rerun prep to finish it)"
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("dtype") not in _DTYPES:
            raise PrepError(
                f"{meta_path}: dtype {self.meta.get('dtype')!r} is not uint16 or uint32; regenerate the shards"
            )
        self.seq_len = int(self.meta["seq_len"])
        self.vocab_size = int(self.meta["vocab_size"])
        self.eos_token_id = int(self.meta["eos_token_id"])
        self.dtype = _DTYPES[self.meta["dtype"]]
        self._starts: list[int] = []  # first global row index of each shard
        self._maps: list[np.memmap | None] = []
        total = 0
        for shard in self.meta["shards"]:
            path = self.dir / shard["file"]
            expected = int(shard["num_sequences"]) * self.seq_len * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                size = path.stat().st_size if path.is_file() else "missing"
                raise PrepError(f"{path}: expected {expected} bytes per meta.json, found {size}; rerun prep to repair")
            self._starts.append(total)
            self._maps.append(None)
            total += int(shard["num_sequences"])
        if total != int(self.meta["num_sequences"]):
            raise PrepError(f"{meta_path}: shards hold {total} rows but num_sequences is {self.meta['num_sequences']}")
        self._len = total

    @property
    def tokenizer_dir(self) -> Path:
        return (self.dir / self.meta.get("tokenizer", "../tokenizer")).resolve()

    def __len__(self) -> int:
        return self._len

    def _shard(self, k: int) -> np.memmap:
        m = self._maps[k]
        if m is None:
            rows = int(self.meta["shards"][k]["num_sequences"])
            m = self._maps[k] = np.memmap(
                self.dir / self.meta["shards"][k]["file"], dtype=self.dtype, mode="r", shape=(rows, self.seq_len)
            )
        return m

    def __getitem__(self, i: int) -> np.ndarray:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"PackedShards index must be an int, got {type(i).__name__}")
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"row {i} out of range for {self._len} rows")
        k = bisect.bisect_right(self._starts, i) - 1
        return np.array(self._shard(k)[i - self._starts[k]], dtype=np.int64)  # (seq_len,)
