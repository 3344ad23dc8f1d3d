"""Packing on the executor: the kept parts (text, then code, each in task order) are cut into ``--pack-tasks``
contiguous groups balanced by bytes; task p tokenizes its group as one stream with the one tokenizer (trained
first in the prep process, or given by ``--tokenizer``) into its own shards, numbered from p x 100,000, and commits
``shards/tasks/part_<p>.json`` (its shard records and counts). The prep process then writes one ``meta.json`` that
lists every task's shards in task order, so the one reader (``data_prep.shards.PackedShards``) reads the folder as
a whole. One pack task is the single stream of the whole corpus; with several, each task's last row is padded, so
the rows differ at task boundaries while the documents and their tokens are the same, in the same order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep

from data_prep.atomic import atomic_write_json
from data_prep.document import CODE, TEXT
from data_prep.engine.executors import build_executor
from data_prep.engine.run import plan_tasks, run_local_tasks
from data_prep.errors import PrepError
from data_prep.packing import SHARDS_PER_TASK, pack_stream, write_meta
from data_prep.scale_config import ScaleSettings, Submitted
from data_prep.writers import state_name

log = logging.getLogger(__name__)
TASKS_DIR = "tasks"


def pack_commit_path(shards_dir: Path, rank: int) -> Path:
    return Path(shards_dir) / TASKS_DIR / state_name(rank)


def kept_part_groups(out: Path, tasks: int) -> list[list[str]]:
    """The kept parts of text and code in packing order, cut into at most ``tasks`` contiguous groups."""
    parts = [p for m in (TEXT, CODE) for p in sorted((out / "kept" / m).glob("part_*.jsonl"))]
    if not parts:
        return [[]]
    return [[str(p) for p in parts[a:b]] for a, b in plan_tasks([p.stat().st_size for p in parts], tasks)]


class PackTask(PipelineStep):
    """Task p: its group of kept parts -> one token stream -> its own shards, then its commit record."""

    name = "r1 pack"
    type = "💽 - WRITER"

    def __init__(
        self, groups: list[list[str]], tokenizer_dir: Path, shards_dir: Path, *, seq_len: int, shard_rows: int
    ):
        super().__init__()
        self.groups, self.tokenizer_dir, self.shards_dir = groups, Path(tokenizer_dir), Path(shards_dir)
        self.seq_len, self.shard_rows = seq_len, shard_rows

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        texts = (json.loads(line)["text"] for part in self.groups[rank] for line in open(part, encoding="utf-8"))
        packed = pack_stream(
            texts,
            self.tokenizer_dir,
            self.shards_dir,
            seq_len=self.seq_len,
            shard_rows=self.shard_rows,
            first_shard=rank * SHARDS_PER_TASK,
        )
        self.stat_update("documents", value=packed["num_documents"])
        atomic_write_json(pack_commit_path(self.shards_dir, rank), packed)


def _committed(shards_dir: Path, rank: int) -> dict[str, Any] | None:
    try:
        packed = json.loads(pack_commit_path(shards_dir, rank).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return packed if isinstance(packed, dict) and {"shards", "num_documents"} <= packed.keys() else None


def pack_on_executor(
    cfg: ScaleSettings, out: Path, tokenizer_dir: Path, *, seq_len: int, shard_rows: int, pack_tasks: int
) -> dict[str, Any]:
    """Pack (or resume packing) the kept text and code into ``OUT/shards``; returns meta.json's content."""
    shards_dir = out / "shards"
    groups = kept_part_groups(out, pack_tasks)
    logs = out / "engine" / "pack" / "logs"
    todo = [p for p in range(len(groups)) if _committed(shards_dir, p) is None]
    for p in todo:  # a lost or damaged record: redo the task even if datatrove marked it complete
        (logs / "completions" / f"{p:05d}").unlink(missing_ok=True)
    if todo:
        step = PackTask(groups, tokenizer_dir, shards_dir, seq_len=seq_len, shard_rows=shard_rows)
        executor = build_executor(cfg, [step], stage="pack", tasks=len(groups), logging_dir=logs)
        if cfg.executor == "local" and cfg.workers == 1:
            run_local_tasks(executor)
        else:
            executor.run()
    packed = [_committed(shards_dir, p) for p in range(len(groups))]
    if any(p is None for p in packed):
        if cfg.executor == "slurm":
            raise Submitted(
                f"packing: {len(groups)} tasks submitted to Slurm; rerun this command when they finish (logs: {logs})"
            )
        raise PrepError(f"packing: tasks did not finish; see {logs} and rerun to resume")
    return write_meta(packed, tokenizer_dir, shards_dir, seq_len=seq_len)
