"""datatrove pipeline steps around the r1 filters.

Documents flow between the steps as ``data_prep.document.Document`` (datatrove's steps only read ``id``, ``text``
and ``metadata``, which it shares), so our filters run unchanged and no conversion is paid per step. Each task
commits one part: ``kept/<modality>/part_<task>.jsonl``, the rejects with their stage and reason in
``rejects/<modality>/part_<task>.jsonl``, and last its per-stage counts in ``state/<modality>/part_<task>.json``,
the commit record; datatrove marks the task complete after that. Timings go to ``engine/<modality>/logs/timing/``
with datatrove's own logs, so every output file is the same bytes on every run.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter as DatatroveFilter
from datatrove.utils.batching import batched
from datatrove.utils.logging import logger

from data_prep.atomic import atomic_open, atomic_write_json
from data_prep.document import Document, normalize_result
from data_prep.engine.inputs import InputFile, iter_input_documents
from data_prep.faults import ENV as CRASH_ENV
from data_prep.faults import maybe_crash
from data_prep.filters.base import BaseFilter
from data_prep.pipeline import apply_filter
from data_prep.progress import Progress
from data_prep.writers import kept_record, part_name, reject_record, state_name

PLAN_FILE = "plan.json"
_commits = itertools.count(1)  # tasks committed in this process, all modalities (for crash injection)


def commit_path(out_dir: Path, modality: str, rank: int) -> Path:
    """A task's commit record: its per-stage counts, written after its kept and rejected documents."""
    return Path(out_dir) / "state" / modality / state_name(rank)


def timing_path(engine_dir: Path, stage: str, rank: int) -> Path:
    return Path(engine_dir) / "logs" / "timing" / f"{stage}_{rank:05d}.json"


class TaskSink:
    """One task's counts per stage and its rejects file; shared by the steps of one pipeline.

    The pipeline's last step calls ``begin``: datatrove calls the steps in order, but only the last one runs
    eagerly; the others are generators whose bodies start when the last step pulls the first document.
    """

    def __init__(self, out_dir: Path, modality: str, stage_names: list[str], *, write: bool):
        self.out_dir = Path(out_dir)
        self.modality = modality
        self.stage_names = stage_names
        self.write = write
        self.stages: dict[str, dict[str, Any]] = {}
        self.filter_errors = 0
        self._stack: ExitStack | None = None
        self._rejects: Any = None

    def begin(self, rank: int) -> None:
        self.rank, self.filter_errors = rank, 0
        self._clock = (time.process_time(), time.perf_counter())
        self.stages = {n: {"in": 0, "kept": 0, "dropped": 0, "reasons": {}} for n in self.stage_names}
        if self.write:
            self._stack = ExitStack()
            path = self.out_dir / "rejects" / self.modality / part_name(rank)
            self._rejects = self._stack.enter_context(atomic_open(path, "w"))

    def reject(self, doc: Document, stage: str, reason: str) -> None:
        if self._rejects is not None:
            self._rejects.write(json.dumps(reject_record(doc, stage, reason), ensure_ascii=False) + "\n")

    def commit(self, engine_dir: Path, num_docs: int) -> None:
        """Rejects first, then the counts: the counts file says the task's outputs are complete."""
        if self._stack is not None:
            self._stack.close()
        self.write_timing(engine_dir, "filter")
        atomic_write_json(
            commit_path(self.out_dir, self.modality, self.rank), {"num_docs": num_docs, "stages": self.stages}
        )
        maybe_crash("filter", next(_commits))

    def write_timing(self, engine_dir: Path, stage: str) -> None:
        atomic_write_json(timing_path(engine_dir, stage, self.rank), self.times())

    def times(self) -> dict[str, float]:
        """CPU and wall seconds of this task so far (the benchmark sums CPU seconds over tasks)."""
        return {
            "cpu_s": round(time.process_time() - self._clock[0], 3),
            "wall_s": round(time.perf_counter() - self._clock[1], 3),
        }

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stack": None, "_rejects": None}


class R1Reader(PipelineStep):
    """Reads the task's contiguous range of input files (from ``engine/plan.json``), or of the documents given in
    memory (``documents``: one worker in this process)."""

    name = "r1 reader"
    type = "📖 - READER"

    def __init__(
        self,
        engine_dir: Path,
        sink: TaskSink,
        *,
        text_field: str,
        id_field: str | None,
        documents: list[Document] | None = None,
    ):
        super().__init__()
        self.engine_dir, self.sink, self.text_field, self.id_field = Path(engine_dir), sink, text_field, id_field
        self.modality = sink.modality
        self.documents = documents

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        plan = json.loads((self.engine_dir / PLAN_FILE).read_text(encoding="utf-8"))
        start, end = plan["ranges"][rank]
        for n, doc in enumerate(self._documents(plan, start, end, rank)):
            doc.position = n
            self.stat_update("documents")
            yield doc

    def _documents(self, plan: dict[str, Any], start: int, end: int, rank: int) -> Iterator[Document]:
        if self.documents is not None:
            yield from self.documents[start:end]  # the executor gives each task its own copy of this step
            return
        files = [InputFile(**f) for f in plan["files"][start:end]]
        exclude = tuple(Path(p) for p in plan.get("exclude", []))
        progress = Progress(f"task {rank}", sum(f.size for f in files), logger.info)
        n = done_bytes = 0
        for f in files:
            for doc in iter_input_documents(
                f, text_field=self.text_field, id_field=self.id_field, modality=self.modality, exclude=exclude
            ):
                n += 1
                yield doc
            done_bytes += f.size
            progress.update(n, done_bytes)
        logger.info(progress.line())


class R1FilterStep(DatatroveFilter):
    """One r1 filter as a datatrove filter: same decisions, same reasons, rejects written with their stage.

    Per-document filters stream; a model filter (``batched``) gets the survivors of each part of ``part_size`` input
    documents as one batch (by ``Document.position``), so its batches (and CLIP's top-k pools) do not depend on
    what the filters before it dropped."""

    type = "🔻 - FILTER"

    def __init__(self, r1_filter: BaseFilter, sink: TaskSink, *, part_size: int = 1000):
        self.name = r1_filter.name  # before the base __init__, which names the step's stats after it
        super().__init__(batch_size=part_size if r1_filter.batched else 1)
        self.r1, self.sink, self.part_size = r1_filter, sink, part_size

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.r1.filter(doc)

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        return self.r1.filter_batch(batch)

    def _batches(self, data: Any) -> Iterator[list[Document]]:
        if not self.r1.batched:
            yield from batched(data, 1)
            return
        batch: list[Document] = []
        for doc in data:
            if batch and doc.position // self.part_size != batch[0].position // self.part_size:
                yield batch
                batch = []
            batch.append(doc)
        if batch:
            yield batch

    def run(self, data: Any, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        if hasattr(self.r1, "begin_task"):
            self.r1.begin_task(rank)
        st = self.sink.stages[self.name]
        for batch in self._batches(data):
            results, self.sink.filter_errors = apply_filter(
                self.r1, batch, modality=self.sink.modality, errors=self.sink.filter_errors
            )
            for doc, result in zip(batch, results):
                keep, reason = normalize_result(result, default_reason=self.name)
                st["in"] += 1
                self.stat_update("total")
                if keep:
                    st["kept"] += 1
                    self.stat_update("forwarded")
                    yield doc
                else:
                    st["dropped"] += 1
                    st["reasons"][reason] = st["reasons"].get(reason, 0) + 1
                    self.stat_update("dropped", f"dropped_{reason}")
                    self.sink.reject(doc, self.name, reason)


class PartWriter(PipelineStep):
    """Last step: kept documents to ``kept/<modality>/part_<task>.jsonl``, then commits the task's rejects and
    counts."""

    name = "r1 part writer"
    type = "💽 - WRITER"

    def __init__(self, out_dir: Path, engine_dir: Path, sink: TaskSink):
        super().__init__()
        self.out_dir, self.engine_dir, self.sink = Path(out_dir), Path(engine_dir), sink

    def run(self, data: Any, rank: int = 0, world_size: int = 1) -> None:
        self.sink.begin(rank)
        path = self.out_dir / "kept" / self.sink.modality / part_name(rank)
        with atomic_open(path, "w") as f:
            for doc in data:
                f.write(json.dumps(kept_record(doc, self.out_dir), ensure_ascii=False) + "\n")
                self.stat_update("kept")
        first = next(iter(self.sink.stages.values()), {"in": 0})
        self.sink.commit(self.engine_dir, first["in"])
        _maybe_crash_run(rank)


def _maybe_crash_run(rank: int) -> None:
    """Test hook: ``DATA_PREP_CRASH_AT=task:N`` SIGKILLs the whole run (the process group: the launcher and every
    worker) right after task N committed its outputs but before datatrove marked it complete."""
    stage, _, n = os.environ.get(CRASH_ENV, "").partition(":")
    if stage == "task" and n.isdigit() and int(n) == rank:
        os.killpg(os.getpgrp(), signal.SIGKILL)
