"""Run one modality's filters on datatrove's executors: plan the tasks, run the stages, merge every task's counts.

This is the one runner of ``r1-ds prep``: by default the local executor with one worker (in this process), with
``--workers N`` N processes, or Slurm / Ray. The result is per-stage counts in pipeline order, from which
``prep.run`` writes ``stats.json``. Kept parts are the tasks' outputs in task order; tasks are contiguous ranges of
the input files, so the kept documents come in input order, whatever the task count.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_write_json
from data_prep.document import TEXT, Document
from data_prep.engine.dedup import DedupBuckets, DuplicateListFilter, NearClusters, SignatureWriter
from data_prep.engine.executors import build_executor
from data_prep.engine.inputs import list_inputs
from data_prep.engine.steps import PLAN_FILE, PartWriter, R1FilterStep, R1Reader, TaskSink, commit_path
from data_prep.errors import PrepError
from data_prep.filters.base import BaseFilter
from data_prep.minhash import MinHashParams
from data_prep.pipeline import add_stage_counts, committed_state
from data_prep.scale_config import ScaleSettings, Submitted

log = logging.getLogger(__name__)
TASKS_PER_WORKER = 4  # more tasks than workers: a slow file delays one small task, not a quarter of the run


def default_tasks(workers: int) -> int:
    """4 per worker; one worker gets one task per modality (one kept part, whose documents load with
    ``datasets.load_dataset`` in one schema)."""
    return 1 if workers == 1 else TASKS_PER_WORKER * max(workers, 1)  # -1 (all at once): 4


def plan_tasks(sizes: Sequence[int], tasks: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges of files, cut where the running byte total crosses k/tasks of the whole."""
    tasks = max(1, min(tasks, len(sizes)))
    total = sum(sizes) or 1
    ranges, start, acc = [], 0, 0
    for i, size in enumerate(sizes):
        acc += size
        left_files, left_tasks = len(sizes) - i - 1, tasks - len(ranges) - 1
        if left_tasks and (acc >= total * (len(ranges) + 1) / tasks or left_files == left_tasks):
            ranges.append((start, i + 1))
            start = i + 1
    ranges.append((start, len(sizes)))
    return ranges


def _load_or_make_plan(
    engine_dir: Path,
    specs: list[str],
    exclude: tuple[Path, ...],
    tasks: int,
    dedup_tasks: int | None,
    *,
    modality: str,
    documents: list[Document] | None,
    part_size: int,
) -> dict[str, Any]:
    """The plan of the first run is kept: resuming with another task count would mix two task layouts. Documents
    given in memory make one task per ``part_size`` of them."""
    path = engine_dir / PLAN_FILE
    if path.is_file():
        plan = json.loads(path.read_text(encoding="utf-8"))
        if len(plan["ranges"]) != tasks and documents is None:
            log.info("engine: keeping the first run's %d tasks (asked for %d)", len(plan["ranges"]), tasks)
        return plan
    if documents is not None:
        n = len(documents)
        plan = {"files": [], "ranges": [(i, min(i + part_size, n)) for i in range(0, n, part_size)] or [(0, 0)]}
    else:
        files = list_inputs(specs, exclude, modality)
        if not files:
            raise PrepError(f"--{modality} {' '.join(specs)}: no input file found; pass files, folders, globs or URLs")
        plan = {"files": [vars(f) for f in files], "ranges": plan_tasks([f.size for f in files], tasks)}
    plan |= {"exclude": [str(p) for p in exclude], "dedup_tasks": dedup_tasks or len(plan["ranges"])}
    atomic_write_json(path, plan)
    return plan


def run_engine(
    *,
    modality: str = TEXT,
    specs: list[str],
    filters: list[BaseFilter],
    out: Path,
    cfg: ScaleSettings,
    text_field: str,
    id_field: str | None,
    exclude: tuple[Path, ...] = (),
    part_size: int = 1000,
    documents: list[Document] | None = None,
) -> dict[str, dict[str, Any]]:
    """Filter one modality's inputs (``specs``, or ``documents`` in memory) on ``cfg.executor``; returns per-stage
    counts over all tasks."""
    engine_dir = out / "engine" / modality
    plan = _load_or_make_plan(
        engine_dir,
        specs,
        exclude,
        cfg.tasks or default_tasks(cfg.workers),
        cfg.dedup_tasks,
        modality=modality,
        documents=documents,
        part_size=part_size,
    )
    tasks = len(plan["ranges"])
    todo = _uncommitted(out, modality, engine_dir, tasks)
    if len(todo) < tasks:
        log.info("Skipping %d of %d %s tasks: committed by an earlier run", tasks - len(todo), tasks, modality)
    if todo:
        log.info(
            "engine (%s, %s): %d tasks over %d files, %d workers",
            cfg.executor,
            modality,
            tasks,
            len(plan["files"]),
            cfg.workers,
        )
        stages = _pipelines(
            filters,
            modality=modality,
            out=out,
            engine_dir=engine_dir,
            cfg=cfg,
            text_field=text_field,
            id_field=id_field,
            part_size=part_size,
            tasks=tasks,
            buckets=plan.get("dedup_tasks", tasks),
            documents=documents,
        )
        n_stages, executor, executors = len(stages), None, []
        for name, (pipeline, n_tasks) in stages.items():
            executor = build_executor(
                cfg,
                pipeline,
                stage=f"{modality}-{name}",
                tasks=n_tasks,
                logging_dir=engine_dir / "logs" / name,
                depends=executor,
            )
            executors.append(executor)
        if cfg.executor == "local" and cfg.workers == 1:
            for ex in executors:
                run_local_tasks(ex)
        elif cfg.executor == "local":
            for ex in executors:
                ex.run()
        else:
            executors[-1].run()  # launches its dependencies first
    missing = _uncommitted(out, modality, engine_dir, tasks)
    if missing:  # the first check found tasks to run, so n_stages is set
        if cfg.executor == "slurm":
            raise Submitted(
                f"engine: {n_stages} stages submitted to Slurm ({tasks} tasks each); rerun this "
                f"command when they finish to merge the stats and pack (logs: {engine_dir / 'logs'})"
            )
        raise PrepError(f"engine: tasks {missing[:10]} did not finish; see {engine_dir / 'logs'} and rerun to resume")
    return merge_task_stats(out, modality, tasks)


def run_local_tasks(executor: Any) -> None:
    """One worker: the tasks one after another in this process, each through the executor's own per-task run
    (logs, stats, completion marks). ``LocalPipelineExecutor.run`` would also start a multiprocess manager
    process, which outlives a killed run, and copy the pipeline for every task (a model filter would load its model
    once per task)."""
    from datatrove.utils.stats import Stats

    for rank in range(executor.world_size):
        for step in executor.pipeline:  # each task's logged stats count that task only
            step.stats = Stats(str(step))
        executor._run_for_rank(rank)  # skips a completed task


def _uncommitted(out: Path, modality: str, engine_dir: Path, tasks: int) -> list[int]:
    """Tasks without a sound commit record. Their completion marks are removed, so the executor redoes them even
    when the record was lost or damaged after datatrove marked the task complete."""
    missing = [t for t in range(tasks) if committed_state(commit_path(out, modality, t)) is None]
    for t in missing:
        (engine_dir / "logs" / "filter" / "completions" / f"{t:05d}").unlink(missing_ok=True)
    return missing


def _pipelines(filters, *, modality, out, engine_dir, cfg, text_field, id_field, part_size, tasks, buckets, documents):
    """{stage: (pipeline, tasks)}: without an exact_dedup stage there is nothing to share, so one stage."""
    names = [f.name for f in filters]

    def steps(sink: TaskSink, chain: list[BaseFilter]) -> list[Any]:
        return [
            R1Reader(engine_dir, sink, text_field=text_field, id_field=id_field, documents=documents),
            *[R1FilterStep(f, sink, part_size=part_size) for f in chain],
        ]

    if "exact_dedup" not in names:
        sink = TaskSink(out, modality, names, write=True)
        return {"filter": (steps(sink, filters) + [PartWriter(out, engine_dir, sink)], tasks)}
    cut = names.index("exact_dedup")
    minhash = (
        MinHashParams(
            ngram=cfg.minhash_ngram,
            bands=cfg.minhash_buckets,
            rows=cfg.minhash_hashes_per_bucket,
            seed=cfg.minhash_seed,
        )
        if cfg.near_dedup
        else None
    )
    dedup: list[BaseFilter] = [DuplicateListFilter("exact_dedup", engine_dir, "exact", buckets)]
    if minhash:
        dedup.append(DuplicateListFilter("near_dedup", engine_dir, "near", buckets))
    chain = filters[:cut] + dedup + filters[cut + 1 :]
    sig_sink = TaskSink(out, modality, names[:cut], write=False)
    sink = TaskSink(out, modality, [f.name for f in chain], write=True)
    bands = minhash.bands if minhash else 0
    stages = {
        "signatures": (
            steps(sig_sink, filters[:cut]) + [SignatureWriter(engine_dir, minhash, sig_sink, buckets)],
            tasks,
        ),
        "dedup": ([DedupBuckets(engine_dir, tasks, buckets)], buckets + bands),
    }
    if minhash:
        stages["cluster"] = ([NearClusters(engine_dir, tasks, buckets, bands)], 1)
    stages["filter"] = (steps(sink, chain) + [PartWriter(out, engine_dir, sink)], tasks)
    return stages


def merge_task_stats(out: Path, modality: str, tasks: int) -> dict[str, dict[str, Any]]:
    """Every task's per-stage counts, summed in task order (completed tasks of earlier runs included)."""
    totals: dict[str, dict[str, Any]] = {}
    for t in range(tasks):
        add_stage_counts(totals, json.loads(commit_path(out, modality, t).read_text(encoding="utf-8"))["stages"])
    return totals
