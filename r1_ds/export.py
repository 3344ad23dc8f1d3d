"""`r1-ds export CKPT OUT`: a DeepSpeed checkpoint of `r1-ds train` (any pipe x tensor x data layout,
or its ds_to_universal conversion) -> one Hugging Face folder (config.json and generation_config.json with
the tokenizer's special-token ids, model.safetensors, the R1 model code, the run's tokenizer, a model card
README.md; r1_ds/model_card.py); tensor-parallel shards are merged.

    r1-ds export runs/tiny/checkpoints runs/tiny/hf          # the latest checkpoint
    r1-ds export runs/tiny/checkpoints/global_step200 out/   # one tag

An alignment run's checkpoint (align.objective) exports the same LM folder plus OUT/align_heads, its projection
heads and temperatures (`AlignHeads.from_pretrained`; r1_ds/align/export.py).

The folder loads with `AutoModelForCausalLM.from_pretrained(OUT)` after `import r1_ds.model`, or with
`trust_remote_code=True` in a process that never imported r1_ds, and gives the training model's logits.
The weights keep the training dtype unless --dtype says otherwise. Checkpoint files are read weights-only
(`--trust-checkpoint` opts out); NaN/Inf weights are refused; OUT is written under a temp name and renamed
into place, replacing an old export whole (tokenizer included).
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("r1_ds.export")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder (with `latest`) or one of its global_step* folders")
    p.add_argument("out", help="output folder for the Hugging Face model")
    p.add_argument("--tag", help="checkpoint tag to export (default: the one `latest` names)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="cast the weights (default: training dtype)")
    p.add_argument(
        "--trust-checkpoint",
        dest="trust_checkpoint",
        action="store_true",
        help="unpickle the checkpoint as it is: only for checkpoints from a source you trust (by default "
        "files are read weights-only and a file naming other Python objects is refused)",
    )


def run(args: argparse.Namespace) -> int:
    from .align.export import export_align
    from .align.trainer import is_align_checkpoint
    from .checkpoint import CheckpointError, export_hf, resolve_tag_dir, verify_tag

    try:
        tag_dir = resolve_tag_dir(args.checkpoint, args.tag)
        verify_tag(tag_dir, trusted=args.trust_checkpoint)  # before any file is unpickled, even to peek
        if is_align_checkpoint(tag_dir, trusted=args.trust_checkpoint):
            export_align(tag_dir, args.out, dtype=args.dtype, trusted=args.trust_checkpoint)
        else:
            export_hf(args.checkpoint, args.out, tag=args.tag, dtype=args.dtype, trusted=args.trust_checkpoint)
    except CheckpointError as err:
        log.error("%s", err)
        return 2
    except OSError as err:  # e.g. a full disk: the temp folder is gone, an old export at OUT is untouched
        log.error(
            "export to %s failed: %s. Nothing was written there. Fix: free space or choose another folder.",
            args.out,
            err,
        )
        return 2
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m r1_ds.export", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run(parser.parse_args()))
