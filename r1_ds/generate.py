"""`r1-ds generate`: greedy or sampled text from a Hugging Face folder (an export, or any causal LM)."""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

log = logging.getLogger("r1_ds.generate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face folder written by `r1-ds export` (config, weights, tokenizer)")
    p.add_argument("--prompt", default="def ", help="text to continue (default: %(default)r)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), > 0 = sampling")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass when sampling")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import r1_ds.model  # noqa: F401  (registers the R1 classes)

    folder = pathlib.Path(args.model)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"r1-ds generate: {folder} has no config.json; pass a folder written by `r1-ds export` "
                         "or `save_pretrained`")
    if args.max_new_tokens <= 0:
        raise SystemExit(f"r1-ds generate: --max-new-tokens={args.max_new_tokens} must be > 0")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.manual_seed(args.seed)
    ids = tok(args.prompt, return_tensors="pt").input_ids
    sample = args.temperature > 0
    out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=sample,
                         temperature=args.temperature if sample else None, top_p=args.top_p if sample else None,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    sys.stdout.write(tok.decode(out[0], skip_special_tokens=True) + "\n")
    return 0
