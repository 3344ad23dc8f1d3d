"""``r1-ds prep`` / ``python -m data_prep``: build the corpus, tokenizer and training shards.

With no input flags (or ``--sample``) it builds the built-in sample corpus and runs the whole pipeline offline.
``add_prep_arguments`` / ``run_prep`` are the hooks the ``r1-ds`` CLI uses; ``main`` is the standalone entry point.
"""

from __future__ import annotations

import argparse
import logging
import sys

from data_prep.config_flags import FlagSpec, add_dataclass_arguments
from data_prep.errors import PrepError
from data_prep.scale_config import EXECUTORS, Submitted

log = logging.getLogger("data_prep")


# Flag layout: which fields go in which --help group; a field missing here still gets its flag ("other settings").
FLAG_GROUPS = {
    "inputs (none given: the built-in sample corpus)": [
        "out",
        "text",
        "code",
        "images",
        "sample",
        "sample_text_docs",
        "sample_code_files",
        "sample_images",
        "text_field",
        "id_field",
    ],
    "filters": ["max_chars", "entropy_threshold", "entropy_window", "python_compile"],
    "quality classifier (BERT-style encoder + trained head)": [
        "quality_model",
        "quality_labels",
        "quality_backbone",
        "quality_threshold",
        "quality_max_length",
    ],
    "CLIP image-caption filter (skipped unless --clip-model)": [
        "clip_model",
        "clip_mode",
        "clip_threshold",
        "clip_keep_fraction",
        "clip_decode_processes",
    ],
    "augmentation and triples": ["image_views", "image_crop_scale", "image_flip", "docstring_pairs_per_file"],
    "tokenizer and packing": ["vocab_size", "tokenizer_sample", "tokenizer", "seq_len", "shard_rows", "pack_tasks"],
    "run": ["part_size", "image_part_size", "seed", "device", "overwrite"],
    "scale-out (datatrove executors; docs/data_at_scale.md)": [
        "executor",
        "workers",
        "tasks",
        "dedup_tasks",
        "cpus_per_task",
        "mem_per_cpu_gb",
        "slurm_partition",
        "slurm_time",
    ],
    "language identification and near-deduplication": [
        "langid",
        "languages",
        "langid_model",
        "near_dedup",
        "minhash_ngram",
        "minhash_buckets",
        "minhash_hashes_per_bucket",
        "minhash_seed",
    ],
}
# What a field's type cannot say: flag names kept for existing command lines, choices, metavars.
FLAG_SPECS = {
    "text": FlagSpec(metavar="PATH"),
    "code": FlagSpec(metavar="DIR"),
    "images": FlagSpec(metavar="PATH"),
    "quality_model": FlagSpec(metavar="auto|none|HEAD_DIR"),
    "quality_labels": FlagSpec(flag="--train-quality-head", metavar="LABELS.jsonl"),
    "quality_backbone": FlagSpec(metavar="minilm|DIR"),
    "clip_model": FlagSpec(metavar="ARCH[:CKPT]|local-dir:DIR"),
    "clip_mode": FlagSpec(choices=("clipscore", "topk")),
    "image_crop_scale": FlagSpec(metavar=("MIN", "MAX")),
    "docstring_pairs_per_file": FlagSpec(flag="--docstring-pairs"),
    "tokenizer": FlagSpec(metavar="DIR"),
    "executor": FlagSpec(choices=EXECUTORS),
    "languages": FlagSpec(metavar="LANG"),
    "langid_model": FlagSpec(metavar="py3langid|FILE"),
}


def add_prep_arguments(parser: argparse.ArgumentParser) -> None:
    """Every ``PrepConfig`` field as a flag (data_prep/config_flags.py), plus the flags that are not settings."""
    from data_prep.prep import PrepConfig

    add_dataclass_arguments(parser, PrepConfig, FLAG_GROUPS, FLAG_SPECS)
    g = parser.add_argument_group("not settings of the run")
    g.add_argument(
        "--config",
        metavar="PREP.yaml",
        help="settings file (YAML/JSON, keys = PrepConfig fields); flags that differ from their defaults override it",
    )
    g.add_argument(
        "--quality-head-out",
        metavar="DIR",
        help="with --train-quality-head: only train the head, save it to DIR and exit",
    )
    g.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level (default: %(default)s)",
    )


def _config_from_args(args: argparse.Namespace):
    """Every PrepConfig field has a flag whose ``dest`` is the field's name; a field without one fails here."""
    import dataclasses

    from data_prep.prep import PrepConfig
    from data_prep.scale_config import apply_config_file

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrepConfig)}
    values = apply_config_file(args, values, PrepConfig)
    for key in ("text", "code", "images"):
        values[key] = list(values[key])
    values["image_crop_scale"] = tuple(values["image_crop_scale"])
    return PrepConfig(**values)


def run_prep(args: argparse.Namespace) -> int:
    """Run prep for parsed arguments; 0 on success, 2 on bad input (the error says what to fix)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log.setLevel(getattr(args, "log_level", "INFO"))
    try:
        if args.quality_head_out:
            if not args.quality_labels:
                raise PrepError(
                    "--quality-head-out: needs --train-quality-head LABELS.jsonl (the examples to train on)"
                )
            from data_prep.quality_head import train_quality_head

            train_quality_head(
                args.quality_labels,
                args.quality_head_out,
                backbone=args.quality_backbone,
                max_length=args.quality_max_length or 256,
                threshold=args.quality_threshold,
                device=args.device,
            )
            return 0
        from data_prep.prep import run

        run(_config_from_args(args))
    except Submitted as exc:  # handed to Slurm: not an error, and nothing to pack yet
        log.info("%s", exc)
    except PrepError as exc:
        log.error("%s", exc)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.split("\n\n")[0])
    add_prep_arguments(parser)
    return run_prep(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
