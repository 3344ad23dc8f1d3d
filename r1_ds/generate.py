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


def _check_arguments(folder: pathlib.Path, args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, in one line with the fix, or None."""
    if not (folder / "config.json").is_file():
        return (
            f"{folder} has no config.json, so it is not a model folder. Fix: pass a folder written by "
            "`r1-ds export` or `save_pretrained`."
        )
    if not args.prompt:
        return "--prompt is empty: there is nothing to continue. Fix: pass some text, e.g. --prompt 'def '."
    if args.max_new_tokens <= 0:
        return f"--max-new-tokens={args.max_new_tokens} must be > 0. Fix: use e.g. 64."
    if args.temperature < 0:
        return f"--temperature={args.temperature} must be >= 0 (0 is greedy). Fix: use e.g. 0.8."
    return None


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import r1_ds.model  # noqa: F401  (registers the R1 classes)

    folder = pathlib.Path(args.model)
    problem = _check_arguments(folder, args)
    if problem:
        log.error("r1-ds generate: %s", problem)
        return 2
    try:
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
    except (OSError, ValueError, KeyError) as err:
        log.error(
            "r1-ds generate: %s does not load as a model with a tokenizer (%s: %s). Fix: pass a folder written "
            "by `r1-ds export` or `save_pretrained`.",
            folder,
            type(err).__name__,
            str(err).splitlines()[0],
        )
        return 2
    torch.manual_seed(args.seed)
    ids = tok(args.prompt, return_tensors="pt").input_ids
    sample = args.temperature > 0
    out = model.generate(
        ids,
        max_new_tokens=args.max_new_tokens,
        do_sample=sample,
        temperature=args.temperature if sample else None,
        top_p=args.top_p if sample else None,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    sys.stdout.write(tok.decode(out[0], skip_special_tokens=True) + "\n")
    return 0
