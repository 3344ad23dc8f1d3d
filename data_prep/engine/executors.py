"""datatrove executors for the engine's stages (signatures -> dedup buckets -> [near-dup clusters] -> filter),
chained by ``depends`` on Slurm and Ray; local stages run one after another.

Every stage has its own logging folder ``engine/logs/<stage>/`` (completions, per-task stats and logs), so a
rerun skips the tasks each stage already completed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from data_prep.scale_config import ScaleSettings


def build_executor(
    cfg: ScaleSettings, pipeline: list[Any], *, stage: str, tasks: int, logging_dir: Path, depends: Any = None
) -> Any:
    """One stage's executor; a one-task stage (the near-dup clusters) runs with one worker. Slurm tasks activate the
    virtual environment this process runs in (when it is one), so they import the same data_prep."""
    workers = 1 if tasks == 1 else cfg.workers
    if cfg.executor == "local":
        from datatrove.executor.local import LocalPipelineExecutor

        return LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logging_dir), skip_completed=True
        )
    if cfg.executor == "slurm":
        from datatrove.executor.slurm import SlurmPipelineExecutor

        return SlurmPipelineExecutor(
            pipeline,
            tasks=tasks,
            workers=workers,
            time=cfg.slurm_time,
            partition=cfg.slurm_partition,
            cpus_per_task=cfg.cpus_per_task,
            mem_per_cpu_gb=int(cfg.mem_per_cpu_gb),
            job_name=f"r1-prep-{stage}",
            venv_path=str(activate) if (activate := Path(sys.prefix) / "bin" / "activate").is_file() else None,
            logging_dir=str(logging_dir),
            skip_completed=True,
            depends=depends,
        )
    if cfg.executor == "ray":
        from datatrove.executor.ray import RayPipelineExecutor

        return RayPipelineExecutor(
            pipeline,
            tasks=tasks,
            workers=workers,
            cpus_per_task=cfg.cpus_per_task,
            mem_per_cpu_gb=cfg.mem_per_cpu_gb,
            logging_dir=str(logging_dir),
            skip_completed=True,
            depends=depends,
        )
    raise ValueError(f"executor {cfg.executor!r}: expected local, slurm or ray")
