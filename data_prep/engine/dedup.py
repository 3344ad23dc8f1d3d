"""Deduplication across all tasks, split over tasks at every step (the layout of datatrove's own MinHash dedup):

1. ``signatures`` (every task): the SHA-1 of each document that reaches the dedup stage goes into one of
   ``dedup_tasks`` buckets by its first bytes, and, with MinHash, each band's keys are kept per band
   (``engine/signatures/<task>.npz``, one member per bucket and per band, read member by member);
2. ``dedup`` (``dedup_tasks`` + one task per band): exact bucket b reads bucket b of every task in task order,
   which is the input order, and marks every copy after the first (``engine/exact/<bucket>.npz``, the positions to
   drop per task); band j sorts band j's keys of every document and writes the links between documents that share
   a key (``engine/links/<band>.npy``);
3. ``cluster`` (one task, MinHash only): union-find over the links; each cluster keeps its first document in input
   order, the others are near duplicates unless already exact ones (``engine/near/<task>.npy``);
4. ``filter`` (every task): drops those positions at the ``exact_dedup`` and ``near_dedup`` stages.

The decisions equal ``find_duplicates``, the single-process reference (tested): a SHA-1 lives in exactly one bucket,
so "first copy in input order" is decided there; an exact copy has the band keys of its original, so linking it too
leaves the clusters of the other documents and their first documents unchanged.

Memory: an exact bucket holds 28 bytes per document of its bucket (SHA-1 + position), a band task 16 bytes per
document (key + position), the cluster task 16 bytes per link; none holds the whole corpus's signatures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from datatrove.pipeline.base import PipelineStep

from data_prep.atomic import atomic_open
from data_prep.document import Document, FilterResult
from data_prep.engine.steps import TaskSink
from data_prep.filters.base import BaseFilter
from data_prep.filters.exact_dedup import content_hash
from data_prep.minhash import MinHasher, MinHashParams


def _signature_path(engine_dir: Path, rank: int) -> Path:
    return engine_dir / "signatures" / f"{rank:05d}.npz"


def _exact_path(engine_dir: Path, bucket: int) -> Path:
    return engine_dir / "exact" / f"{bucket:05d}.npz"


def _links_path(engine_dir: Path, band: int) -> Path:
    return engine_dir / "links" / f"{band:05d}.npy"


def _near_path(engine_dir: Path, rank: int) -> Path:
    return engine_dir / "near" / f"{rank:05d}.npy"


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def bucket_of(sha1: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of each SHA-1 (S20 array): its first 8 bytes as an integer, modulo ``buckets``."""
    raw = np.frombuffer(np.ascontiguousarray(sha1, dtype="S20").tobytes(), dtype=np.uint8).reshape(-1, 20)
    head = raw[:, :8].copy().view(">u8").ravel().astype(np.uint64)
    return (head % np.uint64(buckets)).astype(np.int64)


class SignatureWriter(PipelineStep):
    """Step 1: SHA-1 (bucketed) and band keys of every document that reaches it, in order."""

    name = "r1 dedup signatures"
    type = "🫂 - DEDUP"

    def __init__(self, engine_dir: Path, minhash: MinHashParams | None, sink: TaskSink, buckets: int):
        super().__init__()
        self.engine_dir, self.minhash, self.sink, self.buckets = Path(engine_dir), minhash, sink, buckets

    def run(self, data: Any, rank: int = 0, world_size: int = 1) -> None:
        self.sink.begin(rank)
        hasher = MinHasher(self.minhash) if self.minhash else None
        sha1s, bands = [], []
        for doc in data:
            sha1s.append(bytes.fromhex(content_hash(doc)))
            if hasher is not None:
                bands.append(hasher.band_keys(doc.text))
            self.stat_update("signatures")
        sha1 = np.array(sha1s, dtype="S20").reshape(len(sha1s))
        band_keys = np.array(bands, dtype=np.uint64).reshape(len(sha1s), self.minhash.bands if self.minhash else 0)
        which = bucket_of(sha1, self.buckets)
        members: dict[str, np.ndarray] = {"n": np.array(len(sha1))}
        for b in range(self.buckets):
            pos = np.flatnonzero(which == b)
            members[f"sha1_{b}"], members[f"pos_{b}"] = sha1[pos], pos
        for j in range(band_keys.shape[1]):
            members[f"band_{j}"] = band_keys[:, j]
        _save_npz(_signature_path(self.engine_dir, rank), **members)
        self.sink.write_timing(self.engine_dir, "signatures")


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


class DedupBuckets(PipelineStep):
    """Step 2: task r < buckets decides exact bucket r; task buckets + j writes the links of band j."""

    name = "r1 dedup buckets"
    type = "🫂 - DEDUP"

    def __init__(self, engine_dir: Path, tasks: int, buckets: int):
        super().__init__()
        self.engine_dir, self.tasks, self.buckets = Path(engine_dir), tasks, buckets

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        sigs = [np.load(_signature_path(self.engine_dir, t)) for t in range(self.tasks)]
        if rank < self.buckets:
            self._exact_bucket(sigs, rank)
        else:
            self._band_links(sigs, rank - self.buckets)

    def _exact_bucket(self, sigs: list[Any], b: int) -> None:
        sha1 = np.concatenate([s[f"sha1_{b}"] for s in sigs])  # task order, positions rising: input order
        task = np.concatenate([np.full(len(s[f"pos_{b}"]), t) for t, s in enumerate(sigs)]).astype(np.int64)
        pos = np.concatenate([s[f"pos_{b}"] for s in sigs]).astype(np.int64)
        dup = np.ones(len(sha1), dtype=bool)
        if len(sha1):
            dup[np.unique(sha1, return_index=True)[1]] = False  # return_index: the first occurrence
        self.stat_update("exact_duplicates", value=int(dup.sum()))
        _save_npz(_exact_path(self.engine_dir, b), **{f"t{t}": pos[dup & (task == t)] for t in range(self.tasks)})

    def _band_links(self, sigs: list[Any], j: int) -> None:
        keys = np.concatenate([s[f"band_{j}"] for s in sigs])  # global position = index
        order = np.argsort(keys, kind="stable")
        same = np.flatnonzero(keys[order][1:] == keys[order][:-1])  # order[i + 1] shares order[i]'s key
        links = np.stack([order[same], order[same + 1]], axis=1).astype(np.int64)  # (L, 2) global positions
        self.stat_update("links", value=len(links))
        _save_npy(_links_path(self.engine_dir, j), links)


def exact_positions(engine_dir: Path, rank: int, buckets: int) -> np.ndarray:
    """Sorted positions of task ``rank`` that exact dedup drops (from every bucket)."""
    parts = [np.load(_exact_path(engine_dir, b))[f"t{rank}"] for b in range(buckets)]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


class NearClusters(PipelineStep):
    """Step 3 (one task, MinHash only): clusters of linked documents; all but each cluster's first are dropped."""

    name = "r1 near-dup clusters"
    type = "🫂 - DEDUP"

    def __init__(self, engine_dir: Path, tasks: int, buckets: int, bands: int):
        super().__init__()
        self.engine_dir, self.tasks, self.buckets, self.bands = Path(engine_dir), tasks, buckets, bands

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        counts = [int(np.load(_signature_path(self.engine_dir, t))["n"]) for t in range(self.tasks)]
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        links = np.concatenate([np.load(_links_path(self.engine_dir, j)) for j in range(self.bands)])
        parent: dict[int, int] = {}

        def root(i: int) -> int:
            r = i
            while parent.get(r, r) != r:
                r = parent[r]
            while parent.get(i, i) != r:  # path compression
                parent[i], i = r, parent[i]
            return r

        for a, b in links.tolist():
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # the root is the cluster's first document
        near = np.array(sorted(i for i in parent if root(i) != i), dtype=np.int64)
        for t in range(self.tasks):
            mine = near[(near >= starts[t]) & (near < starts[t + 1])] - starts[t]
            mine = np.setdiff1d(mine, exact_positions(self.engine_dir, t, self.buckets))  # exact copies go first
            _save_npy(_near_path(self.engine_dir, t), mine)
            self.stat_update("near_duplicates", value=len(mine))


class DuplicateListFilter(BaseFilter):
    """Step 4: drops the positions steps 2 and 3 listed for this task (``kind``: exact or near).

    Positions count the documents that reach the exact dedup stage; the near stage sees the exact survivors, so it
    keeps counting positions of the same sequence by skipping the exact ones.
    """

    def __init__(self, name: str, engine_dir: Path, kind: str, buckets: int):
        self.name = name
        self.kind = kind
        """exact | near."""
        self._engine_dir = Path(engine_dir)
        self._buckets = buckets
        self._drop: set[int] = set()
        self._skip: set[int] = set()
        self._pos = 0

    def begin_task(self, rank: int) -> None:
        exact = set(exact_positions(self._engine_dir, rank, self._buckets).tolist())
        if self.kind == "exact":
            self._drop, self._skip = exact, set()
        else:
            self._drop, self._skip = set(np.load(_near_path(self._engine_dir, rank)).tolist()), exact
        self._pos = 0

    def filter(self, doc: Document) -> FilterResult:
        while self._pos in self._skip:  # exact duplicates never reach the near stage
            self._pos += 1
        pos, self._pos = self._pos, self._pos + 1
        if self.kind == "exact":
            doc.metadata["sha1"] = content_hash(doc)
            return (False, "duplicate") if pos in self._drop else True
        return (False, "near_duplicate") if pos in self._drop else True
