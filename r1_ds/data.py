"""Training data: packed token shards, mixtures of them, a synthetic fallback, and a deterministic progressive
sampler.

Packed shards are read and checked by their format's one owner, data_prep/shards.py (meta.json with dtype, token
range and checksums; raw (num_sequences, seq_len) arrays). `data.path` names one folder, or several that train
together as a mixture (`Mixture`): each folder a share of the sequences, all packed with one tokenizer.

Sampling is a pure function of the optimizer step, so a resumed run reads exactly the batches an
uninterrupted run would have read, and every rank can compute its share without communication:

    stage s        holds `global_batch` B_s, the first `data_fraction` of the sequences (n_s of them),
                   and the steps [start_s, start_s + steps_s)
    epoch e        of stage s is the permutation P(seed, s, e) of [0, n_s); an epoch is n_s // B_s steps
    step t         reads P[(t - start_s) mod epoch ...] — B_s sequences, laid out (gas, data, micro):
                   micro-step m of data rank r gets rows [(m * data + r) * micro, ... + micro)

Tensor and pipeline peers of a data rank get identical rows; different data ranks get disjoint rows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from data_prep.shards import DataError, PackedShards

__all__ = [
    "DataError",
    "PackedShards",
    "Mixture",
    "SyntheticTokens",
    "open_dataset",
    "ProgressiveSampler",
    "Stage",
    "batch_iterator",
]

log = logging.getLogger("r1_ds.data")


# ----------------------------------------------------------------------------- datasets


class SyntheticTokens:
    """Built-in sample data for tests and smoke runs: sequence i repeats a random motif of 3..12
    tokens, so a model can learn it (the loss falls well below log(vocab)). Deterministic in (seed, i)."""

    tokenizer_dir = None
    eos_token_id = None

    def __init__(self, num_sequences: int, seq_len: int, vocab_size: int, seed: int = 0):
        self.num_sequences, self.seq_len, self.vocab_size, self.seed = num_sequences, seq_len, vocab_size, seed

    def __len__(self) -> int:
        return self.num_sequences

    def row(self, i: int, seq_len: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(i)])
        motif = rng.integers(0, self.vocab_size, size=int(rng.integers(3, 13)))
        return np.resize(motif, seq_len)

    def batch(self, indices: np.ndarray, seq_len: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.row(i, seq_len) for i in indices]).astype(np.int64))


class Mixture:
    """Several packed folders as one data set of `len(ds)` = their total rows, each folder a fixed share.

    Row v of the mixture comes from folder `source[v]`: folder i fills round(share_i * N) of the N rows, spread
    evenly through the order (so every stretch of rows, and the first `data_fraction` of them, holds the same
    shares), and its k-th row there is its row k * n_i // quota_i: a folder larger than its quota gives an evenly
    spaced subset of its rows, a smaller one repeats its rows evenly. A pure function of the folders and weights.
    """

    def __init__(self, sources: list[PackedShards], weights: list[float] | None = None):
        self.sources = sources
        sizes = np.array([len(s) for s in sources], dtype=np.int64)
        total = int(sizes.sum())
        shares = sizes / total if weights is None else np.asarray(weights, dtype=np.float64) / sum(weights)
        self.shares = [float(x) for x in shares]
        quota = np.floor(shares * total).astype(np.int64)
        by_remainder = np.argsort(-(shares * total - quota), kind="stable")  # largest remainders get the rest
        quota[by_remainder[: total - int(quota.sum())]] += 1
        self.quota = quota
        slot = np.concatenate([np.arange(q) for q in quota])  # k-th row of its folder's quota
        place = np.concatenate([(np.arange(q) + 0.5) / q for q in quota])  # where it sits in [0, 1)
        order = np.argsort(place, kind="stable")
        self.source = np.repeat(np.arange(len(sources)), quota)[order]
        self.row = (slot * np.repeat(sizes, quota) // np.repeat(np.maximum(quota, 1), quota))[order]
        first = sources[0]
        self.seq_len = min(s.seq_len for s in sources)
        self.vocab_size, self.eos_token_id = first.vocab_size, first.eos_token_id
        self.tokenizer_dir = first.tokenizer_dir
        self.max_token_id = max(s.max_token_id for s in sources)

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, indices: np.ndarray, seq_len: int) -> torch.Tensor:
        """Rows `indices`, first `seq_len` tokens, as int64 (n, seq_len)."""
        indices = np.asarray(indices)
        out = np.empty((len(indices), seq_len), dtype=np.int64)
        src = self.source[indices]
        for i, ds in enumerate(self.sources):
            mine = src == i
            if mine.any():
                out[mine] = ds.rows(self.row[indices[mine]], seq_len)
        return torch.from_numpy(out)


def _mixture_items(path: Any) -> tuple[list[str], list[float] | None]:
    """data.path as a list: folders (weighted by their rows) or {path, weight} mappings."""
    form = (
        "Fix: write data.path as a list of folders (each weighted by its rows), or of {path: DIR, weight: W} "
        "mappings with W > 0 for every folder"
    )
    if not path:
        raise DataError(f"data.path=[]: an empty list names no data. {form}, or leave data.path empty (synthetic).")
    if all(isinstance(p, str) and p for p in path):
        return list(path), None
    folders, weights = [], []
    for i, item in enumerate(path):
        if not (isinstance(item, dict) and set(item) == {"path", "weight"} and isinstance(item["path"], str)):
            raise DataError(
                f"data.path[{i}]={item!r}: every item must be a folder, or every item a mapping with "
                f"exactly the keys path and weight. {form}."
            )
        w = item["weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise DataError(f"data.path[{i}].weight={w!r}: must be a number > 0 (its share is weight / sum). {form}.")
        folders.append(item["path"])
        weights.append(float(w))
    return folders, weights


def _tokenizer_identity(ds: PackedShards) -> tuple:
    """What must agree between folders that train together: vocabulary, separator and the tokenizer itself."""
    return ds.vocab_size, ds.eos_token_id, ds.meta.get("tokenizer_sha256")


def open_mixture(path: list) -> Mixture:
    folders, weights = _mixture_items(path)
    sources = [PackedShards(f) for f in folders]
    for f, s in zip(folders, sources):
        if not len(s):
            raise DataError(
                f"data.path: {f} holds no rows, so it cannot give its share of the mixture. Fix: drop it "
                "from data.path, or pack documents into it."
            )
    ids = [_tokenizer_identity(s) for s in sources]
    if len(set(ids)) > 1:
        described = "; ".join(
            f"{f}: vocab {v}, eos {e}, tokenizer sha256 {str(h)[:12]}" for f, (v, e, h) in zip(folders, ids)
        )
        raise DataError(
            f"data.path: the folders were not packed with one tokenizer ({described}); the same token "
            "id would mean different text. Fix: pack every folder with the same tokenizer "
            "(`r1-ds prep --tokenizer DIR`, DIR = the tokenizer folder of one run), or train on one."
        )
    ds = Mixture(sources, weights)
    for f, share, q, s in zip(folders, ds.shares, ds.quota, sources):
        log.info("data mixture: %s: share %.3f, %d of %d rows (%d in the folder)", f, share, q, len(ds), len(s))
    return ds


def open_dataset(
    path: str | list | None, *, seq_len: int | None, vocab_size: int, synthetic_sequences: int = 4096, seed: int = 0
):
    """The training set and the sequence length to train at. `path` None or "synthetic": sample data; a list:
    a mixture of packed folders."""
    if path in (None, "", "synthetic"):
        seq_len = seq_len or 128
        return SyntheticTokens(synthetic_sequences, seq_len, vocab_size, seed), seq_len
    if isinstance(path, list):
        ds = open_mixture(path)
    elif isinstance(path, str):
        ds = PackedShards(path)
    else:
        raise DataError(
            f"data.path={path!r}: must be a packed shard folder or a list of them. Fix: e.g. "
            "data.path=runs/prep/shards."
        )
    seq_len = seq_len or ds.seq_len
    if seq_len > ds.seq_len:
        raise DataError(
            f"data.seq_len={seq_len} is longer than the packed sequences ({ds.seq_len} tokens in "
            f"{path}). Fix: set data.seq_len <= {ds.seq_len}, or re-pack with a longer seq_len."
        )
    if ds.vocab_size > vocab_size:  # the reader checked that every token id lies below ds.vocab_size
        raise DataError(
            f"the shards in {path} use a vocabulary of {ds.vocab_size} tokens (largest id "
            f"{ds.max_token_id}) but the model has vocab_size={vocab_size}. Fix: set "
            f"model.overrides.vocab_size >= {ds.vocab_size} (a multiple of 64 is fastest)."
        )
    return ds, seq_len


# ----------------------------------------------------------------------------- progressive sampler


@dataclass(frozen=True)
class Stage:
    """One progressive-training stage (resolved: explicit start and length)."""

    start: int  # first optimizer step of the stage
    steps: int  # optimizer steps in the stage
    global_batch: int  # sequences per optimizer step, over all data-parallel ranks
    data_fraction: float  # the stage samples from the first `data_fraction` of the sequences


class ProgressiveSampler:
    """Step -> sample indices, for a list of stages (one stage = ordinary training)."""

    def __init__(self, num_samples: int, stages: list[Stage], seed: int):
        if not stages:
            raise DataError("the sampler needs at least one stage")
        self.num_samples, self.stages, self.seed = num_samples, list(stages), seed
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}
        for i, s in enumerate(self.stages):
            n = self.stage_size(i)
            if n < s.global_batch:
                raise DataError(
                    f"stage {i + 1} reads the first {s.data_fraction:.0%} of the data = {n} sequences, fewer than its "
                    f"global batch of {s.global_batch}. Fix: raise data_fraction, lower global_batch, or add data "
                    f"({num_samples} sequences in all)."
                )

    def stage_size(self, i: int) -> int:
        return int(self.num_samples * self.stages[i].data_fraction)

    def stage_index(self, step: int) -> int:
        for i, s in enumerate(self.stages):
            if step < s.start + s.steps:
                return i
        return len(self.stages) - 1  # past the end: keep the last stage's batch (e.g. extra steps)

    def _permutation(self, stage: int, epoch: int) -> np.ndarray:
        key = (stage, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) >= 2:  # one epoch at a time, plus the next one at a boundary
                self._perm_cache.pop(next(iter(self._perm_cache)))
            self._perm_cache[key] = np.random.default_rng([self.seed, stage, epoch]).permutation(self.stage_size(stage))
        return self._perm_cache[key]

    def _position(self, step: int) -> tuple[int, int, int]:
        """(stage, epoch, batch number within the epoch) of optimizer step `step`."""
        i = self.stage_index(step)
        s = self.stages[i]
        epoch, pos = divmod(step - s.start, self.stage_size(i) // s.global_batch)
        return i, epoch, pos

    def global_indices(self, step: int) -> np.ndarray:
        """The `global_batch` sequence indices of optimizer step `step` (0-based)."""
        i, epoch, pos = self._position(step)
        b = self.stages[i].global_batch
        return self._permutation(i, epoch)[pos * b : (pos + 1) * b]

    def micro_batches(self, step: int, *, data_rank: int, data_size: int, micro_batch: int) -> list[np.ndarray]:
        """This data rank's micro-batches of step `step`, in order: gas arrays of `micro_batch` indices."""
        idx = self.global_indices(step)
        per_micro = micro_batch * data_size
        if len(idx) % per_micro:
            raise DataError(
                f"global batch {len(idx)} is not a multiple of micro_batch {micro_batch} x data parallel "
                f"{data_size} = {per_micro}"
            )
        grid = idx.reshape(len(idx) // per_micro, data_size, micro_batch)  # (gas, data, micro)
        return [grid[m, data_rank] for m in range(grid.shape[0])]

    def state_dict(self, step: int) -> dict:
        """What a checkpoint stores: enough to check that a resumed run reads the same data."""
        i, epoch, pos = self._position(step)
        return {
            "step": step,
            "stage": i,
            "epoch": epoch,
            "position": pos * self.stages[i].global_batch,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "stages": [[s.start, s.steps, s.global_batch, s.data_fraction] for s in self.stages],
        }

    def check_resume(self, state: dict | None, step: int) -> None:
        """Refuse to resume on different data or a different stage plan (the batches would differ)."""
        if not state:
            log.warning("the checkpoint has no data-sampler state; resuming at step %d by recomputing it", step)
            return
        mine = self.state_dict(step)
        for key in ("seed", "num_samples"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"resume: the checkpoint was trained with data {key}={state.get(key)} but this run has "
                    f"{mine[key]}; the data order would change. Fix: resume with the same data and seed, or start "
                    "a new run (checkpoint.resume=none) / load only the weights."
                )

        # the stages trained so far must be the same; the current one may be lengthened, later ones changed; the
        # last stage of a finished run counts as current (raising schedule.steps extends it)
        def trained(stages):
            return [
                (st[0], st[2], st[3]) + ((st[1],) if st[0] + st[1] <= step and i < len(stages) - 1 else ())
                for i, st in enumerate(stages)
                if st[0] < step
            ]

        if trained(state.get("stages", [])) != trained(mine["stages"]):
            raise DataError(
                f"resume at step {step}: the stages trained so far differ from the checkpoint's "
                f"(start, steps, global_batch, data_fraction: {state.get('stages')} vs {mine['stages']}). "
                "Fix: keep the finished stages and the current stage's batch and data fraction as they "
                "were; only the current stage's length and later stages may change."
            )


def batch_iterator(dataset, micro_indices: list[np.ndarray], seq_len: int):
    """(input_ids, labels) per micro-batch: labels are the inputs, unshifted (the loss shifts)."""
    for idx in micro_indices:
        x = dataset.batch(idx, seq_len)
        yield x, x
