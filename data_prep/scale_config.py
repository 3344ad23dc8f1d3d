"""Settings of the engine's executors, language ID and near-deduplication (a base of ``PrepConfig``; their flags
are generated from the fields, data_prep/config_flags.py), and ``--config prep.yaml`` (read by the training
stack's loader, ``r1_ds.config``).

Fields in ``HOW_FIELDS`` say how the work is spread (executor, workers, cluster resources); they never change the
output, so they stay out of the settings fingerprint and a run may resume with other values.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from data_prep.config_flags import field_default
from data_prep.errors import PrepError

EXECUTORS = ("local", "slurm", "ray")
HOW_FIELDS = (
    "executor",
    "workers",
    "tasks",
    "dedup_tasks",
    "cpus_per_task",
    "mem_per_cpu_gb",
    "slurm_partition",
    "slurm_time",
)


class Submitted(Exception):
    """The engine's stages were handed to a cluster scheduler; rerun the same command after they finish."""


@dataclass
class ScaleSettings:
    executor: str = "local"
    """datatrove executor that runs the tasks: local (worker processes, or this process with one worker), slurm
    or ray."""
    workers: int = 1
    """Tasks run at once (local: worker processes; slurm/ray: concurrent tasks, -1 for all)."""
    tasks: int | None = None
    """Tasks the input files are split into (contiguous ranges, balanced by bytes; the unit of resume); None: 4 per
    worker, 1 with one worker."""
    dedup_tasks: int | None = None
    """Buckets the exact dedup is split into, one task each (MinHash adds one task per band); None: as many as
    --tasks. Fixed by the first run of an output (kept in its plan)."""
    cpus_per_task: int = 1
    """Slurm / Ray: CPUs reserved per task."""
    mem_per_cpu_gb: float = 2.0
    """Slurm / Ray: memory reserved per CPU (GB)."""
    slurm_partition: str | None = None
    """Slurm partition (required with --executor slurm)."""
    slurm_time: str = "24:00:00"
    """Slurm time limit per task (HH:MM:SS)."""
    langid: bool = True
    """Label text with its language (py3langid); the Gopher stop-word rule then applies to English only."""
    languages: list[str] = field(default_factory=list)
    """Keep only these languages (ISO 639-1, e.g. en de); empty: keep all (label only)."""
    langid_model: str = "py3langid"
    """py3langid (the model inside the package) or the path of a langid.py model file."""
    near_dedup: bool = False
    """MinHash near-duplicate removal across all tasks (after exact dedup)."""
    minhash_ngram: int = 5
    """Words per shingle (FineWeb: 5)."""
    minhash_buckets: int = 14
    """LSH bands (FineWeb: 14); two documents are candidates when one band matches."""
    minhash_hashes_per_bucket: int = 8
    """Hashes per band (FineWeb: 8); 14 x 8 flags pairs above about 0.72 Jaccard similarity."""
    minhash_seed: int = 1
    """Seed of the MinHash permutations."""


def validate_scale(cfg: ScaleSettings) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise PrepError(msg)

    need(
        cfg.workers >= 1 or (cfg.workers == -1 and cfg.executor in ("slurm", "ray")),
        f"--workers {cfg.workers}: must be at least 1 (-1, all tasks at once, only with slurm or ray)",
    )
    need(cfg.tasks is None or cfg.tasks >= 1, f"--tasks {cfg.tasks}: must be at least 1")
    need(cfg.dedup_tasks is None or cfg.dedup_tasks >= 1, f"--dedup-tasks {cfg.dedup_tasks}: must be at least 1")
    need(
        cfg.executor != "slurm" or bool(cfg.slurm_partition),
        "--executor slurm: needs --slurm-partition NAME (the partition the tasks are submitted to)",
    )
    need(
        min(cfg.minhash_ngram, cfg.minhash_buckets, cfg.minhash_hashes_per_bucket) >= 1,
        "--minhash-ngram / --minhash-buckets / --minhash-hashes-per-bucket: must be at least 1",
    )
    bad = [lang for lang in cfg.languages if not (len(lang) in (2, 3) and lang.isalpha() and lang.islower())]
    need(not bad, f"--languages {' '.join(bad)}: use lower-case ISO 639-1 codes such as en, de, fr, zh")
    if cfg.langid:
        from data_prep.langid import check_model

        check_model(cfg.langid_model)
    need(cfg.langid or not cfg.languages, "--languages with --no-langid: the language filter needs the language stage")


def scale_fingerprint(d: dict[str, Any]) -> dict[str, Any]:
    """Drop the how-fields from a settings dict."""
    for key in HOW_FIELDS:
        d.pop(key, None)
    return d


def apply_config_file(args: argparse.Namespace, values: dict[str, Any], cls: type) -> dict[str, Any]:
    """Values from ``--config`` for every field whose flag was left at its default (flags win over the file).

    The file goes through the training loader (``r1_ds.config.load_dataclass``): unknown keys and wrong types are
    refused with the list of known keys.
    """
    path = getattr(args, "config", None)
    if not path:
        return values
    from r1_ds.config import ConfigError, load_dataclass, read_mapping

    defaults = {f.name: field_default(f) for f in dataclasses.fields(cls)}
    try:
        given = read_mapping(path)
        from_file = load_dataclass(cls, overrides=given)  # top-level keys: no dots, so set as they are
    except ConfigError as exc:
        raise PrepError(f"--config {path}: {exc}") from exc
    merged = dict(values)
    for name in given:
        if _same(values[name], defaults[name]):
            merged[name] = getattr(from_file, name)
    return merged


def _same(a: Any, b: Any) -> bool:
    return (list(a) if isinstance(a, (list, tuple)) else a) == (list(b) if isinstance(b, (list, tuple)) else b)
