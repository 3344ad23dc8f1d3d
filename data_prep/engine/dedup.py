"""Deduplication across all tasks, in three steps (the layout of datatrove's own dedup):

1. every task writes the SHA-1 of each document that reaches the dedup stage, plus its MinHash band keys
   (``engine/signatures/<task>.npz``);
2. one task reads all signatures in task order, which is the input order, and decides: exact duplicates keep the
   first copy (as the single-process ``ExactDedupFilter`` does); near-duplicates are clusters of the remaining
   documents linked by a shared band key (union-find), and each cluster keeps its first document
   (``engine/duplicates/<task>.json``: the positions to drop, per task);
3. every task filters again and drops those positions at the ``exact_dedup`` and ``near_dedup`` stages.

Memory of step 2: 20 bytes of SHA-1 plus 8 bytes per band per document (14 bands: 132 bytes a document, about
13 GB for 100 M documents); docs/data_at_scale.md says how to shard it beyond one node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.pipeline.base import PipelineStep

from data_prep.atomic import atomic_open, atomic_write_json
from data_prep.document import Document, FilterResult
from data_prep.engine.steps import TaskSink
from data_prep.filters.base import BaseFilter
from data_prep.filters.exact_dedup import content_hash
from data_prep.minhash import MinHasher, MinHashParams
from data_prep.writers import state_name


def _signature_path(engine_dir: Path, rank: int) -> Path:
    return engine_dir / "signatures" / f"{rank:05d}.npz"


def _duplicates_path(engine_dir: Path, rank: int) -> Path:
    return engine_dir / "duplicates" / state_name(rank)


class SignatureWriter(PipelineStep):
    """Step 1: SHA-1 and band keys of every document that reaches it, in order."""

    name = "r1 dedup signatures"
    type = "🫂 - DEDUP"

    def __init__(self, engine_dir: Path, minhash: MinHashParams | None, sink: TaskSink):
        super().__init__()
        self.engine_dir, self.minhash, self.sink = Path(engine_dir), minhash, sink

    def run(self, data: Any, rank: int = 0, world_size: int = 1) -> None:
        self.sink.begin(rank)
        hasher = MinHasher(self.minhash) if self.minhash else None
        sha1s, bands = [], []
        for doc in data:
            sha1s.append(bytes.fromhex(content_hash(doc)))
            if hasher is not None:
                bands.append(hasher.band_keys(doc.text))
            self.stat_update("signatures")
        n_bands = self.minhash.bands if self.minhash else 0
        with atomic_open(_signature_path(self.engine_dir, rank), "wb") as f:
            np.savez(
                f,
                sha1=np.array(sha1s, dtype="S20").reshape(len(sha1s)),
                bands=np.array(bands, dtype=np.uint64).reshape(len(sha1s), n_bands),
                cpu_s=np.array(self.sink.times()["cpu_s"]),
            )


def find_duplicates(sha1: np.ndarray, bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exact, near) boolean masks over documents in input order.

    exact: the SHA-1 was seen at an earlier position. near: not exact, and in a band-key cluster (union-find over
    the exact-unique documents) whose first document is another one.
    """
    n = len(sha1)
    exact = np.ones(n, dtype=bool)
    if n:
        _, first = np.unique(sha1, return_index=True)
        exact[first] = False
    near = np.zeros(n, dtype=bool)
    if not n or bands.shape[1] == 0:
        return exact, near
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    unique = np.flatnonzero(~exact)
    for b in range(bands.shape[1]):
        keys = bands[unique, b]
        order = np.argsort(keys, kind="stable")  # stable: equal keys stay in input order
        sorted_keys, idx = keys[order], unique[order]
        same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])  # position j: idx[j+1] shares idx[j]'s key
        for j in same:
            ra, rb = root(int(idx[j])), root(int(idx[j + 1]))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # the root is the cluster's first document
    roots = np.array([root(int(i)) for i in unique], dtype=np.int64)
    near[unique] = roots != unique
    return exact, near


class GlobalDedup(PipelineStep):
    """Step 2 (one task): reads every task's signatures and writes each task's positions to drop."""

    name = "r1 global dedup"
    type = "🫂 - DEDUP"

    def __init__(self, engine_dir: Path, tasks: int):
        super().__init__()
        self.engine_dir, self.tasks = Path(engine_dir), tasks

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        loaded = [np.load(_signature_path(self.engine_dir, t)) for t in range(self.tasks)]
        counts = [len(x["sha1"]) for x in loaded]
        exact, near = find_duplicates(
            np.concatenate([x["sha1"] for x in loaded]), np.concatenate([x["bands"] for x in loaded])
        )
        self.stat_update("exact_duplicates", value=int(exact.sum()))
        self.stat_update("near_duplicates", value=int(near.sum()))
        start = 0
        for t, n in enumerate(counts):
            atomic_write_json(
                _duplicates_path(self.engine_dir, t),
                {
                    "num_docs": n,
                    "exact": np.flatnonzero(exact[start : start + n]).tolist(),
                    "near": np.flatnonzero(near[start : start + n]).tolist(),
                },
            )
            start += n


class DuplicateListFilter(BaseFilter):
    """Step 3: drops the positions step 2 listed for this task (``kind``: exact or near).

    Positions count the documents that reach the exact dedup stage; the near stage sees the exact survivors, so it
    keeps counting positions of the same sequence by skipping the exact ones.
    """

    def __init__(self, name: str, engine_dir: Path, kind: str):
        self.name = name
        self.kind = kind
        """exact | near."""
        self._engine_dir = Path(engine_dir)
        self._drop: set[int] = set()
        self._skip: set[int] = set()
        self._pos = 0

    def begin_task(self, rank: int) -> None:
        lists = json.loads(_duplicates_path(self._engine_dir, rank).read_text(encoding="utf-8"))
        self._drop = set(lists[self.kind])
        self._skip = set(lists["exact"]) if self.kind == "near" else set()
        self._pos = 0

    def filter(self, doc: Document) -> FilterResult:
        while self._pos in self._skip:  # exact duplicates never reach the near stage
            self._pos += 1
        pos, self._pos = self._pos, self._pos + 1
        if self.kind == "exact":
            doc.metadata["sha1"] = content_hash(doc)
            return (False, "duplicate") if pos in self._drop else True
        return (False, "near_duplicate") if pos in self._drop else True
