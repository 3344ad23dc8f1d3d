"""Run one modality's filters (text or code) on datatrove's executors: plan the tasks, run the three stages, merge every task's counts.

The result has the single-process runner's shape (per-stage counts in pipeline order), so ``prep.run`` writes
``stats.json`` and packs the kept parts the same way. Kept parts are the tasks' outputs in task order; tasks are
contiguous ranges of the input files, so the kept documents come in input order, whatever the task count.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from data_prep.atomic import atomic_write_json
from data_prep.document import TEXT
from data_prep.engine.dedup import DedupBuckets, DuplicateListFilter, NearClusters, SignatureWriter
from data_prep.engine.executors import build_executor
from data_prep.engine.inputs import list_inputs
from data_prep.engine.steps import PLAN_FILE, PartWriter, R1FilterStep, R1Reader, TaskSink, filter_stats_path
from data_prep.errors import PrepError
from data_prep.filters.base import BaseFilter
from data_prep.minhash import MinHashParams
from data_prep.pipeline import add_stage_counts
from data_prep.scale_config import ScaleSettings, Submitted

log = logging.getLogger(__name__)
TASKS_PER_WORKER = 4  # more tasks than workers: a slow file delays one small task, not a quarter of the run


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
    engine_dir: Path, specs: list[str], exclude: tuple[Path, ...], tasks: int, dedup_tasks: int | None, flag: str
) -> dict[str, Any]:
    """The plan of the first run is kept: resuming with another task count would mix two task layouts."""
    path = engine_dir / PLAN_FILE
    if path.is_file():
        plan = json.loads(path.read_text(encoding="utf-8"))
        if len(plan["ranges"]) != tasks:
            log.info("engine: keeping the first run's %d tasks (asked for %d)", len(plan["ranges"]), tasks)
        return plan
    files = list_inputs(specs, exclude)
    if not files:
        raise PrepError(f"{flag} {' '.join(specs)}: no input file found; pass files, folders, globs or URLs")
    ranges = plan_tasks([f.size for f in files], tasks)
    plan = {"files": [vars(f) for f in files], "ranges": ranges, "dedup_tasks": dedup_tasks or len(ranges)}
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
) -> dict[str, dict[str, Any]]:
    """Filter one modality's inputs on ``cfg.executor``; returns per-stage counts over all tasks."""
    engine_dir = out / "engine" / modality
    plan = _load_or_make_plan(engine_dir, specs, exclude, cfg.tasks or TASKS_PER_WORKER * max(cfg.workers, 1),
                              cfg.dedup_tasks, flag=f"--{modality}")
    tasks = len(plan["ranges"])
    log.info("engine (%s, %s): %d files in %d tasks, %d workers", cfg.executor, modality, len(plan["files"]), tasks,
             cfg.workers)
    stages = _pipelines(filters, modality=modality, out=out, engine_dir=engine_dir, cfg=cfg, text_field=text_field,
                        id_field=id_field, part_size=part_size, tasks=tasks, buckets=plan.get("dedup_tasks", tasks))
    executor = None
    executors = []
    for name, (pipeline, n_tasks) in stages.items():
        executor = build_executor(cfg, pipeline, stage=f"{modality}-{name}", tasks=n_tasks,
                                  logging_dir=engine_dir / "logs" / name, depends=executor)
        executors.append(executor)
    if cfg.executor == "local":
        for ex in executors:
            ex.run()
    else:
        executors[-1].run()  # launches its dependencies first
    missing = [t for t in range(tasks) if not filter_stats_path(engine_dir, t).is_file()]
    if missing:
        if cfg.executor == "slurm":
            raise Submitted(f"engine: {len(stages)} stages submitted to Slurm ({tasks} tasks each); rerun this "
                            f"command when they finish to merge the stats and pack (logs: {engine_dir / 'logs'})")
        raise PrepError(f"engine: tasks {missing[:10]} did not finish; see {engine_dir / 'logs'} and rerun to resume")
    return merge_task_stats(engine_dir, tasks)


def _pipelines(filters, *, modality, out, engine_dir, cfg, text_field, id_field, part_size, tasks, buckets):
    """{stage: (pipeline, tasks)}: without an exact_dedup stage there is nothing to share, so one stage."""
    names = [f.name for f in filters]

    def steps(sink: TaskSink, chain: list[BaseFilter]) -> list[Any]:
        return [R1Reader(engine_dir, sink, text_field=text_field, id_field=id_field),
                *[R1FilterStep(f, sink, batch_size=part_size) for f in chain]]

    if "exact_dedup" not in names:
        sink = TaskSink(out, modality, names, write=True)
        return {"filter": (steps(sink, filters) + [PartWriter(out, engine_dir, sink)], tasks)}
    cut = names.index("exact_dedup")
    minhash = (MinHashParams(ngram=cfg.minhash_ngram, bands=cfg.minhash_buckets, rows=cfg.minhash_hashes_per_bucket,
                             seed=cfg.minhash_seed) if cfg.near_dedup else None)
    dedup: list[BaseFilter] = [DuplicateListFilter("exact_dedup", engine_dir, "exact", buckets)]
    if minhash:
        dedup.append(DuplicateListFilter("near_dedup", engine_dir, "near", buckets))
    chain = filters[:cut] + dedup + filters[cut + 1 :]
    sig_sink = TaskSink(out, modality, names[:cut], write=False)
    sink = TaskSink(out, modality, [f.name for f in chain], write=True)
    bands = minhash.bands if minhash else 0
    stages = {
        "signatures": (steps(sig_sink, filters[:cut]) + [SignatureWriter(engine_dir, minhash, sig_sink, buckets)],
                       tasks),
        "dedup": ([DedupBuckets(engine_dir, tasks, buckets)], buckets + bands),
    }
    if minhash:
        stages["cluster"] = ([NearClusters(engine_dir, tasks, buckets, bands)], 1)
    stages["filter"] = (steps(sink, chain) + [PartWriter(out, engine_dir, sink)], tasks)
    return stages


def merge_task_stats(engine_dir: Path, tasks: int) -> dict[str, dict[str, Any]]:
    """Every task's per-stage counts, summed in task order (completed tasks of earlier runs included)."""
    totals: dict[str, dict[str, Any]] = {}
    for t in range(tasks):
        add_stage_counts(totals, json.loads(filter_stats_path(engine_dir, t).read_text(encoding="utf-8"))["stages"])
    return totals
