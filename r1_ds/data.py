"""Training data: packed token shards, a synthetic fallback, and a deterministic progressive sampler.

Packed shards (written by data_prep; read here with numpy only, no data_prep import):

    DIR/meta.json   {"seq_len", "dtype": "uint16"|"uint32", "vocab_size", "eos_token_id",
                     "num_sequences", "shards": [{"file", "num_sequences"}], "tokenizer": "../tokenizer"}
    DIR/shard_*.bin raw C-order arrays (num_sequences, seq_len)

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

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger("r1_ds.data")


class DataError(ValueError):
    """The data folder or a data setting is unusable; the message names it and says how to fix it."""


# ----------------------------------------------------------------------------- datasets


class PackedShards:
    """Read-only view of a packed shard folder: `len(ds)` sequences of `ds.seq_len` tokens."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        meta_path = os.path.join(self.path, "meta.json")
        if not os.path.isfile(meta_path):
            raise DataError(f"data.path={self.path!r} has no meta.json: it is not a packed shard folder. Fix: point "
                            "data.path at the folder `r1-ds prep` wrote (it holds meta.json and shard_*.bin), or leave "
                            "data.path empty to train on synthetic data.")
        with open(meta_path) as f:
            meta = json.load(f)
        missing = [k for k in ("seq_len", "dtype", "vocab_size", "shards") if k not in meta]
        if missing:
            raise DataError(f"{meta_path} lacks {missing}. Fix: re-run the packing step of `r1-ds prep`.")
        if meta["dtype"] not in ("uint16", "uint32"):
            raise DataError(f"{meta_path}: dtype={meta['dtype']!r} must be 'uint16' or 'uint32'.")
        self.meta = meta
        self.seq_len = int(meta["seq_len"])
        self.vocab_size = int(meta["vocab_size"])
        self.eos_token_id = meta.get("eos_token_id")
        dtype = np.dtype(meta["dtype"])
        self._arrays = []
        for shard in meta["shards"]:
            file = os.path.join(self.path, shard["file"])
            n = int(shard["num_sequences"])
            expected = n * self.seq_len * dtype.itemsize
            size = os.path.getsize(file) if os.path.isfile(file) else -1
            if size != expected:
                raise DataError(f"shard {file}: {size} bytes on disk, meta.json says {n} x {self.seq_len} "
                                f"{dtype.name} = {expected}. Fix: re-run the packing step; the folder is incomplete.")
            if n:
                self._arrays.append(np.memmap(file, dtype=dtype, mode="r", shape=(n, self.seq_len)))
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])
        if "num_sequences" in meta and int(meta["num_sequences"]) != len(self):
            raise DataError(f"{meta_path}: num_sequences={meta['num_sequences']} but the shards hold {len(self)}.")
        tok = meta.get("tokenizer")
        self.tokenizer_dir = os.path.normpath(os.path.join(self.path, tok)) if tok else None
        if self.tokenizer_dir and not os.path.isdir(self.tokenizer_dir):
            self.tokenizer_dir = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def batch(self, indices: np.ndarray, seq_len: int) -> torch.Tensor:
        """Rows `indices`, first `seq_len` tokens, as int64 (n, seq_len)."""
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        rows = [self._arrays[s][i - self._starts[s], :seq_len] for s, i in zip(shard, indices)]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


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


def open_dataset(path: str | None, *, seq_len: int | None, vocab_size: int, synthetic_sequences: int = 4096,
                 seed: int = 0):
    """The training set and the sequence length to train at. `path` None or "synthetic": sample data."""
    if path in (None, "", "synthetic"):
        seq_len = seq_len or 128
        return SyntheticTokens(synthetic_sequences, seq_len, vocab_size, seed), seq_len
    ds = PackedShards(path)
    seq_len = seq_len or ds.seq_len
    if seq_len > ds.seq_len:
        raise DataError(f"data.seq_len={seq_len} is longer than the packed sequences ({ds.seq_len} tokens in "
                        f"{path}). Fix: set data.seq_len <= {ds.seq_len}, or re-pack with a longer seq_len.")
    if ds.vocab_size > vocab_size:
        raise DataError(f"the shards in {path} use a vocabulary of {ds.vocab_size} tokens but the model has "
                        f"vocab_size={vocab_size}. Fix: set model.overrides.vocab_size >= {ds.vocab_size} (a "
                        "multiple of 64 is fastest).")
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
                    f"({num_samples} sequences in all).")

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
        return self._permutation(i, epoch)[pos * b:(pos + 1) * b]

    def micro_batches(self, step: int, *, data_rank: int, data_size: int, micro_batch: int) -> list[np.ndarray]:
        """This data rank's micro-batches of step `step`, in order: gas arrays of `micro_batch` indices."""
        idx = self.global_indices(step)
        per_micro = micro_batch * data_size
        if len(idx) % per_micro:
            raise DataError(f"global batch {len(idx)} is not a multiple of micro_batch {micro_batch} x data parallel "
                            f"{data_size} = {per_micro}")
        grid = idx.reshape(len(idx) // per_micro, data_size, micro_batch)  # (gas, data, micro)
        return [grid[m, data_rank] for m in range(grid.shape[0])]

    def state_dict(self, step: int) -> dict:
        """What a checkpoint stores: enough to check that a resumed run reads the same data."""
        i, epoch, pos = self._position(step)
        return {"step": step, "stage": i, "epoch": epoch, "position": pos * self.stages[i].global_batch,
                "seed": self.seed, "num_samples": self.num_samples,
                "stages": [[s.start, s.steps, s.global_batch, s.data_fraction] for s in self.stages]}

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
                    "a new run (checkpoint.resume=none) / load only the weights.")
        # the stages trained so far must be the same; the current one may be lengthened, later ones changed; the
        # last stage of a finished run counts as current (raising schedule.steps extends it)
        def trained(stages):
            return [(st[0], st[2], st[3]) + ((st[1],) if st[0] + st[1] <= step and i < len(stages) - 1 else ())
                    for i, st in enumerate(stages) if st[0] < step]

        if trained(state.get("stages", [])) != trained(mine["stages"]):
            raise DataError(f"resume at step {step}: the stages trained so far differ from the checkpoint's "
                            f"(start, steps, global_batch, data_fraction: {state.get('stages')} vs {mine['stages']}). "
                            "Fix: keep the finished stages and the current stage's batch and data fraction as they "
                            "were; only the current stage's length and later stages may change.")


def batch_iterator(dataset, micro_indices: list[np.ndarray], seq_len: int):
    """(input_ids, labels) per micro-batch: labels are the inputs, unshifted (the loss shifts)."""
    for idx in micro_indices:
        x = dataset.batch(idx, seq_len)
        yield x, x
