"""Passkey retrieval at long context after a short fine-tune at that length: R1, R1 window-only, Llama.

    python benchmarks/passkey.py --r1 $OUT/r1_hf --llama $OUT/llama_hf --deepspeed-config /tmp/r1_bf16.json \
        --lengths 4096 16384 32768 --json benchmarks/results/passkey_h100.json
    python benchmarks/passkey.py --tiny           # CPU: random-init tiny models, 256 tokens, seconds

The task is r1_ds/evaluation/passkey.py (a 5-digit key at a random depth in repeated filler, asked for at the end;
exact-match accuracy of the greedy answer; chance is ~1e-5). Each model, starting from the weights
benchmarks/quality.py trained (--r1, --llama):
  r1         the R1 folder as trained;
  r1_window  the same weights with the paragraph and document levels removed (attention_levels=[1]): only the
             local window of local_window tokens reaches back, so it cannot see a needle farther away;
  llama      the dense baseline;
  r1_l2      the R1 folder with L2's research options on (R1Config l2_routing="token", l2_projections="separate":
             docs/quality.md), L2's own q/k/v starting as copies of the shared ones (the same function at step 0);
             the eager reference computes it, so lengths up to R1_L2_MAX_LENGTH only (not in the default --models);
is fine-tuned through the lengths shortest first, its weights (and optimizer state) carried on: --steps at each L
with DeepSpeed (--deepspeed-config, micro-batch max(1, --tokens-per-step // L), lr --lr, constant after a 10-step
warm-up; loss on the answer tokens only by default, --loss all for every token; keys one token per digit
unless --no-split-digits; a fresh seeded example every
row), then the accuracy at L on --eval-examples held-out examples (other seeds; rounded up to whole
micro-batches). Every row is written to the JSON as it finishes, so a run cut short keeps the finished rows.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.quality import provenance  # noqa: E402 (after the sys.path line above)
from r1_ds.evaluation.passkey import answers_correct, batch, make_example  # noqa: E402 (after the sys.path line above)

EVAL_SEED = 1_000_000  # evaluation examples use seeds from here on; training ones from 0
CURVE_EVERY = 100  # steps per point of a row's answer-loss curve
R1_L2_MAX_LENGTH = 4096  # r1_l2 (eager reference): its dense masks and fp32 scores grow as T^2 per layer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--r1", help="R1 Hugging Face folder (benchmarks/quality.py --export-r1)")
    p.add_argument("--llama", help="Llama folder (benchmarks/quality.py --export-llama)")
    p.add_argument("--tokenizer", default=os.path.join(ROOT, ".quality_data", "pack", "tokenizer"))
    p.add_argument(
        "--models", nargs="+", default=["r1", "r1_window", "llama"], choices=["r1", "r1_window", "llama", "r1_l2"]
    )
    p.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        help="fine-tuned in turn, shortest first (default 1k 4k 16k 32k: the short stage teaches the copy cheaply)",
    )
    p.add_argument(
        "--steps",
        nargs="+",
        default=["1024:1500", "4096:200", "16384:60", "32768:40"],
        help="fine-tuning steps per length, LENGTH:STEPS (a bare number: every length)",
    )
    p.add_argument("--tokens-per-step", type=int, default=8192, help="micro-batch = max(1, this // length)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--loss",
        choices=["all", "answer"],
        default="answer",
        help="train on the answer tokens only, or on every token (the needle's repeated key then teaches copying)",
    )
    p.add_argument(
        "--split-digits",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every digit of a key its own token (benchmarks/passkey_small.py DigitSplit), not the BPE's 1-3 pieces",
    )
    p.add_argument("--eval-examples", type=int, default=50)
    p.add_argument("--deepspeed-config", default=os.path.join(ROOT, "ds_configs", "single_gpu_bf16.json"))
    p.add_argument("--json", help="results (default: benchmarks/results/passkey_<card>.json)")
    p.add_argument("--tiny", action="store_true", help="CPU check: random-init tiny R1 and Llama, length 256")
    args = p.parse_args(argv)
    args.lengths = args.lengths or (None if args.tiny else [1024, 4096, 16384, 32768])
    if args.tiny:
        args.lengths = args.lengths or [256]
        args.steps, args.tokens_per_step, args.eval_examples = ["3"], 512, 4
        args.deepspeed_config = os.path.join(ROOT, "ds_configs", "tiny_cpu.json")
    return args


def steps_for(spec: list[str], length: int) -> int:
    table = {}
    for item in spec:
        if ":" in item:
            k, v = item.split(":")
            table[int(k)] = int(v)
        else:
            table[None] = int(item)
    if length in table:
        return table[length]
    if None in table:
        return table[None]
    raise SystemExit(f"passkey: --steps gives no step count for length {length}; add {length}:STEPS")


def is_model_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def tiny_models(tokenizer_dir: str, out: str) -> tuple[str, str]:
    """Random-init tiny R1 and Llama folders (the CPU check has no trained weights)."""
    from transformers import AutoTokenizer

    from benchmarks.quality import llama_model
    from r1_ds.model import R1Config, R1ForCausalLM

    vocab = -(-len(AutoTokenizer.from_pretrained(tokenizer_dir)) // 64) * 64
    torch.manual_seed(0)
    R1ForCausalLM(R1Config.from_preset("tiny", vocab_size=vocab)).save_pretrained(os.path.join(out, "r1"))
    llama_model("tiny", vocab, 256).save_pretrained(os.path.join(out, "llama"))
    return os.path.join(out, "r1"), os.path.join(out, "llama")


def load(name: str, args, length: int):
    from transformers import AutoModelForCausalLM

    from r1_ds.model import R1ForCausalLM

    if name == "llama":
        model = AutoModelForCausalLM.from_pretrained(args.llama, dtype=torch.float32, attn_implementation="sdpa")
        model.config.max_position_embeddings = max(length, model.config.max_position_embeddings)
        return model
    extra = {
        "r1_window": {"attention_levels": [1]},
        "r1_l2": {"l2_routing": "token", "l2_projections": "separate"},
    }.get(name, {})
    model = R1ForCausalLM.from_pretrained(args.r1, dtype=torch.float32, **extra)
    model.config.max_position_embeddings = max(length, model.config.max_position_embeddings)
    model.config.label_smoothing = 0.0
    if name == "r1_l2":  # L2's own q/k/v start as the trained shared ones
        for layer in model.model.layers:
            layer.self_attn.copy_shared_into_l2()
    fast = torch.cuda.is_available() and name != "r1_l2"  # the research options run in the eager reference only
    model.set_attn_implementation("flex_attention" if fast else "eager")
    return model


def fine_tune(name: str, args, tokenizer, ds_base: dict):
    """One model through every length in turn (shortest first): fine-tune at L, score at L, carry the weights on.
    Yields a row per length. The micro-batch follows each length (tokens-per-step // L); the engine and its
    optimizer state are kept across lengths, and the warm-up happens once."""
    import deepspeed

    lengths = sorted(args.lengths)
    micros = [max(1, args.tokens_per_step // L) for L in lengths]
    ds = copy.deepcopy(ds_base)
    ds.update(train_micro_batch_size_per_gpu=micros[0], gradient_accumulation_steps=1, train_batch_size=micros[0])
    ds["optimizer"]["params"]["lr"] = args.lr
    torch.manual_seed(0)
    model = load(name, args, lengths[-1])
    warm = 10
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / warm)),
    )
    seen = 0  # training examples so far: every example is a fresh seed
    try:
        for length, micro in zip(lengths, micros):
            steps = steps_for(args.steps, length)
            engine.module.train()
            t0 = time.perf_counter()
            losses, answer_losses = [], []
            for _ in range(steps):
                ids, labels = batch([make_example(tokenizer, length, seen + i) for i in range(micro)], engine.device)
                seen += micro
                out = engine(input_ids=ids, labels=ids if args.loss == "all" else labels, use_cache=False)
                engine.backward(out.loss)
                engine.step()
                losses.append(out.loss.item())
                answer_losses.append(answer_loss(out.logits, labels))
                if len(answer_losses) % CURVE_EVERY == 0:
                    print(
                        f"{name} L={length} step {len(answer_losses)}: answer loss "
                        f"{sum(answer_losses[-CURVE_EVERY:]) / CURVE_EVERY:.3f}",
                        flush=True,
                    )
            train_s = time.perf_counter() - t0
            engine.module.eval()
            heldout = heldout_examples(tokenizer, length, args.eval_examples, micro)
            correct = score(engine.module, heldout, micro, engine.device)
            window = {}
            if name == "r1":  # the control on the very weights just fine-tuned: L2 and L3 removed
                config, levels = engine.module.config, engine.module.config.attention_levels
                config.attention_levels = [1]
                try:
                    ok = score(engine.module, heldout, micro, engine.device)
                finally:
                    config.attention_levels = levels
                window = {"window_only_accuracy": sum(ok) / len(ok)}
            yield {
                **window,
                "model": name,
                "length": length,
                "steps": steps,
                "micro_batch": micro,
                "train_s": train_s,
                "eval_s": time.perf_counter() - t0 - train_s,
                "first_loss": losses[0],
                "last_loss": sum(losses[-5:]) / len(losses[-5:]),
                "first_answer_loss": answer_losses[0],
                "last_answer_loss": sum(answer_losses[-5:]) / len(answer_losses[-5:]),
                "accuracy": sum(correct) / len(correct),
                "answer_loss_curve": [  # mean answer loss of each CURVE_EVERY steps: when (if) the copy is learnt
                    sum(answer_losses[i : i + CURVE_EVERY]) / len(answer_losses[i : i + CURVE_EVERY])
                    for i in range(0, len(answer_losses), CURVE_EVERY)
                ],
                "eval_examples": len(correct),
            }
    finally:
        engine = model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def heldout_examples(tokenizer, length: int, n: int, micro: int) -> list:
    """n held-out examples (seeds from EVAL_SEED), rounded up to whole micro-batches: no new shape to compile."""
    return [make_example(tokenizer, length, EVAL_SEED + i) for i in range(-(-n // micro) * micro)]


def score(model, examples: list, micro: int, device) -> list[bool]:
    """Exact match of each example's greedy answer, a micro-batch at a time."""
    correct = []
    for start in range(0, len(examples), micro):
        correct += answers_correct(model, examples[start : start + micro], device)
    return correct


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross entropy on the answer tokens (labels: -100 elsewhere), whatever the training loss covers."""
    with torch.no_grad():
        target = labels[:, 1:]
        at = target != -100  # only the answer's few positions: no fp32 copy of a 32k x vocab logit tensor
        return torch.nn.functional.cross_entropy(logits[:, :-1][at].float(), target[at]).item()


def table(rows: list[dict]) -> str:
    head = (
        f"{'length':>7} {'model':>10} {'steps':>6} {'train s':>8} {'loss first -> last':>20} "
        f"{'answer loss':>20} {'accuracy':>9} {'window-only':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['length']:>7} {r['model']:>10}  {r['error']}")
            continue
        lines.append(
            f"{r['length']:>7} {r['model']:>10} {r['steps']:>6} {r['train_s']:>8.0f} "
            f"{r['first_loss']:>9.3f} -> {r['last_loss']:<8.3f} "
            f"{r['first_answer_loss']:>9.3f} -> {r['last_answer_loss']:<8.3f} {r['accuracy']:>9.0%} "
            + (f"{r['window_only_accuracy']:>12.0%}" if "window_only_accuracy" in r else "")
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from r1_ds.distributed import init_distributed

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if args.split_digits:
        from benchmarks.passkey_small import DigitSplit

        tokenizer = DigitSplit(tokenizer)
    tmp = tempfile.mkdtemp(prefix="passkey_tiny_") if args.tiny else None
    if args.tiny:
        args.r1, args.llama = tiny_models(args.tokenizer, tmp)
    need = {"r1": args.r1, "r1_window": args.r1, "r1_l2": args.r1, "llama": args.llama}
    too_long = [L for L in args.lengths if L > R1_L2_MAX_LENGTH]
    if "r1_l2" in args.models and too_long:
        print(
            f"passkey: --models r1_l2 runs the eager reference, whose (T x T) masks and scores do not fit one GPU past "
            f"{R1_L2_MAX_LENGTH} tokens; --lengths has {' '.join(map(str, too_long))}. Fix: run r1_l2 on its own with "
            f"--lengths {R1_L2_MAX_LENGTH} or shorter (e.g. --lengths 1024 4096).",
            file=sys.stderr,
        )
        return 2
    missing = sorted({m for m in args.models if not need[m]})
    if missing:
        print(
            f"passkey: --models {' '.join(missing)} need{'s' if len(missing) == 1 else ''} a weights folder "
            f"(--r1 / --llama, written by benchmarks/quality.py --export-r1 / --export-llama)",
            file=sys.stderr,
        )
        return 2
    absent = sorted({f"--{m.split('_')[0]} {need[m]}" for m in args.models if not is_model_folder(need[m])})
    if absent:  # before any engine starts: from_pretrained would read a missing local path as a Hub repo id
        print(
            f"passkey: {', '.join(absent)}: not a model folder (no config.json there). Fix: run "
            f"benchmarks/quality.py with --export-r1 / --export-llama first (gpu_suite.sh's quality step on the same "
            f"machine), or pass the folder it wrote.",
            file=sys.stderr,
        )
        return 2
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    init_distributed()
    with open(args.deepspeed_config) as f:
        ds_base = json.load(f)
    card = torch.cuda.get_device_name().split()[-1].lower() if torch.cuda.is_available() else "cpu"
    path = args.json or os.path.join(ROOT, "benchmarks", "results", f"passkey_{card}.json")
    result = {
        "benchmark": "passkey",
        **provenance(__file__, argv),
        "r1": args.r1,
        "llama": args.llama,
        "lr": args.lr,
        "loss": args.loss,
        "split_digits": args.split_digits,
        "tokens_per_step": args.tokens_per_step,
        "rows": [],
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for name in args.models:
        rows = fine_tune(name, args, tokenizer, ds_base)
        for length in sorted(args.lengths):
            try:  # a row that fails (out of memory, a missing folder) is recorded and the others still run
                row = next(rows)
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                row = {"model": name, "length": length, "error": f"{type(err).__name__}: {str(err)[:300]}"}
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            with open(path, "w") as f:  # every finished row, in case the run is cut short
                json.dump(result, f, indent=2)
            if "error" in row:  # a model that failed at one length is not fine-tuned further
                for rest in sorted(args.lengths)[sorted(args.lengths).index(length) + 1 :]:
                    result["rows"].append(
                        {"model": name, "length": rest, "error": "skipped: failed at a shorter length"}
                    )
                break
    print()
    print(table(result["rows"]))
    print(f"\nwrote {path}")
    return 1 if any("error" in r for r in result["rows"]) else 0


if __name__ == "__main__":
    from r1_ds.distributed import exit_process

    exit_process(main())
