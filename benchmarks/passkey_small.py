"""Passkey retrieval at small scale, from random init: learning curves of R1, R1 window-only and Llama.

    python benchmarks/passkey_small.py --models llama r1 --split-digits --json /tmp/passkey_small.json
    python benchmarks/passkey_small.py --device cuda --split-digits --window 128 --paragraph 128 --document 1024 \
        --curriculum 256:1500 1024:600 4096:300 --json $OUT/passkey_small_cuda.json

The task is r1_ds/evaluation/passkey.py with the corpus tokenizer. A random-init model needs no embedding rows for
the 32k tokens the task never uses, so ids are mapped onto the few hundred it does (the filler, needle and question
tokens and every token a key 10000-99999 splits into): the same task, a vocabulary small enough for a CPU. Models,
all width --width, --layers layers, the same seed:
  llama      LlamaForCausalLM, dense causal attention (SDPA);
  r1         R1: a window of --window tokens, paragraphs of --paragraph, documents of --document, --top-k routing;
  r1_window  the same R1 with attention_levels=[1]: the needle is beyond its window, so it is at chance.
Each is trained with AdamW at --lr (--warmup steps of warm-up) on fresh seeded examples (micro-batch --batch) with
the loss on the answer only (--loss answer) or on every token (--loss all: the needle's second copy of the key
teaches copying nearby), and scored every --eval-every steps on --eval-examples held-out examples (exact match),
with the answer's own loss. --split-digits makes every digit of a key one token (DigitSplit). For r1 it also
measures how often L2's routing picks the needle's paragraph (needle_routed).

--lengths trains a fresh model per length for --steps. --curriculum LENGTH:STEPS ... trains one model per (model,
seed) through the lengths in the order given, weights and optimizer carried on, each stage's micro-batch
max(1, --tokens-per-step // LENGTH), and scores it at each length after that length's stage: a row per stage.
--device cuda runs it on the GPU; R1 there takes --r1-attn (eager by default; flex_attention for long lengths).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.quality import provenance  # noqa: E402 (after the sys.path line above)
from r1_ds.evaluation.passkey import (  # noqa: E402 (after the sys.path line above)
    ANSWER,
    FILLER,
    INTRO,
    NEEDLE,
    QUESTION,
    answers_correct,
    batch,
    make_example,
)
from r1_ds.model.configuration_r1 import L2_PROJECTIONS, L2_ROUTINGS, R1Config  # noqa: E402 (after the sys.path line above)

EVAL_SEED = 1_000_000  # evaluation examples use seeds from here on; training ones from 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default=os.path.join(ROOT, ".quality_data", "pack", "tokenizer"))
    p.add_argument("--models", nargs="+", default=["llama", "r1", "r1_window"], choices=["llama", "r1", "r1_window"])
    p.add_argument("--lengths", nargs="+", type=int, default=[256], help="a fresh model per length, --steps each")
    p.add_argument(
        "--curriculum",
        nargs="+",
        metavar="LENGTH:STEPS",
        help="one model carried through these stages in order (replaces --lengths and --steps)",
    )
    p.add_argument("--tokens-per-step", type=int, default=8192, help="--curriculum: micro-batch = this // length")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--r1-attn",
        choices=["eager", "flex_attention"],
        default="eager",
        help="R1's attention: the eager reference (any device; dense masks, so up to a few thousand tokens) or the "
        "CUDA fast path (any length; compiles afresh per length and batch shape)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--loss", choices=["all", "answer"], default="answer")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-examples", type=int, default=32)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--paragraph", type=int, default=16)
    p.add_argument("--document", type=int, default=64)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--split-digits", action="store_true", help="every digit of a key its own token (DigitSplit)")
    # R1Config's L2 research options for the R1 models (docs/quality.md): token = each query routed by its own
    # query; separate = L2's own q/k/v
    p.add_argument("--l2-routing", choices=L2_ROUTINGS, default=L2_ROUTINGS[0], help="R1Config.l2_routing")
    p.add_argument(
        "--l2-projections", choices=L2_PROJECTIONS, default=L2_PROJECTIONS[0], help="R1Config.l2_projections"
    )
    p.add_argument("--json", help="results (default: none)")
    args = p.parse_args(argv)
    args.stages = parse_stages(args.curriculum) if args.curriculum else None
    research = R1Config(l2_routing=args.l2_routing, l2_projections=args.l2_projections).l2_research
    if args.r1_attn == "flex_attention" and (research or not args.device.startswith("cuda")):
        raise SystemExit(
            "passkey_small: --r1-attn flex_attention needs --device cuda and the default L2 options (the research "
            "options --l2-routing/--l2-projections only have the eager reference). Fix: --r1-attn eager."
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"passkey_small: --device {args.device}, but torch sees no CUDA device. Fix: --device cpu.")
    return args


def parse_stages(spec: list[str]) -> list[tuple[int, int]]:
    stages = []
    for item in spec:
        length, _, steps = item.partition(":")
        if not (length.isdigit() and steps.isdigit() and int(steps) > 0):
            raise SystemExit(
                f"passkey_small: --curriculum item {item!r} is not LENGTH:STEPS with both positive integers. "
                "Fix: for instance --curriculum 256:1500 1024:500."
            )
        stages.append((int(length), int(steps)))
    return stages


class DigitSplit:
    """The tokenizer, but every digit a token of its own (" 48213" -> " 4" "8" "2" "1" "3"), as Llama's and
    Mistral's tokenizers split numbers: a key is then 5 tokens of 10 kinds each."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __len__(self):
        return len(self.tokenizer)

    def __call__(self, text, add_special_tokens=False):
        if not isinstance(text, str):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        ids = []
        for piece in re.findall(r" ?\d|(?:[^\d ]| (?!\d))+", text):
            ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return {"input_ids": ids}


def task_vocab(tokenizer) -> torch.Tensor:
    """(32k,) map from tokenizer ids to a compact vocabulary of the ids the task can produce (-1 elsewhere)."""
    texts = [INTRO, FILLER, QUESTION, NEEDLE.format(key=""), *(ANSWER.format(key=k) for k in range(10000, 100000))]
    used = sorted({i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in ids})
    table = torch.full((len(tokenizer),), -1, dtype=torch.long)
    table[used] = torch.arange(len(used))
    return table


def make_model(name: str, args, vocab: int, length: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1_ds.model import R1Config, R1ForCausalLM

    torch.manual_seed(seed)
    heads = max(1, args.width // 32)
    if name == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=args.width,
            intermediate_size=args.width * 11 // 4,
            num_hidden_layers=args.layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=length,
            tie_word_embeddings=True,
            attn_implementation="sdpa",
        )
        return LlamaForCausalLM(config)
    config = R1Config(
        vocab_size=vocab,
        hidden_size=args.width,
        intermediate_size=args.width * 11 // 4,
        num_hidden_layers=args.layers,
        level_heads=(max(1, heads // 2), heads, heads * 2),
        local_window=args.window,
        paragraph_size=args.paragraph,
        document_size=args.document,
        route_top_k=args.top_k,
        max_position_embeddings=length,
        label_smoothing=0.0,
        attention_levels=[1] if name == "r1_window" else [1, 2, 3],
        l2_routing=args.l2_routing,
        l2_projections=args.l2_projections,
    )
    model = R1ForCausalLM(config)
    model.set_attn_implementation(args.r1_attn)
    return model


def remap(ex, table: torch.Tensor):
    ids = table[torch.tensor(ex.input_ids)]
    assert (ids >= 0).all(), "a passkey token is missing from the task vocabulary"
    return type(ex)(**{**ex.__dict__, "input_ids": ids.tolist()})


def accuracy(model, tokenizer, table, length: int, n: int, micro: int) -> float:
    model.eval()
    correct = []
    for start in range(0, n, micro):
        exs = [
            remap(make_example(tokenizer, length, EVAL_SEED + i), table) for i in range(start, min(n, start + micro))
        ]
        correct += answers_correct(model, exs, device=model.device)
    model.train()
    return sum(correct) / len(correct)


@torch.no_grad()
def needle_routed(model, tokenizer, table, length: int, n: int) -> dict:
    """How often L2's routing picks the needle's paragraph for the query paragraph that holds the question's last
    token (the one predicting the answer's first token), or for that token itself under l2_routing="token": the
    fraction of (example, layer, head) whose routed set includes a paragraph with needle tokens, against what
    picking the same number of candidates at random gives. L2's own projections where it has them."""
    from r1_ds.model.hierarchical_attention import route_paragraphs, route_tokens

    c = model.config
    if c.l2_routing == "summary":  # routed by scores inside the attention: not measured here
        return {}
    g, hits, chance, total = c.paragraph_size, 0, 0.0, 0
    captured = []

    def l2_qk(m, args):
        x = args[0]
        if c.l2_projections == "separate":
            captured.append((m.l2_q_proj(x), m.l2_k_proj(x)))
        else:
            captured.append((m.q_proj(x), m.k_proj(x)))

    hooks = [layer.self_attn.register_forward_pre_hook(l2_qk) for layer in model.model.layers]
    model.eval()
    try:
        for i in range(n):
            ex = remap(make_example(tokenizer, length, EVAL_SEED + i), table)
            captured.clear()
            model(input_ids=torch.tensor([ex.input_ids], device=model.device), use_cache=False)
            b = (ex.answer_start - 1) // g
            n_needle = len(tokenizer(NEEDLE.format(key=ex.key), add_special_tokens=False)["input_ids"])
            needle = set(range(ex.needle_start // g, (ex.needle_start + n_needle - 1) // g + 1))
            for q, k in captured:
                if c.l2_routing == "token":
                    t = ex.answer_start - 1
                    routed = route_tokens(
                        q[:, t : t + 1],
                        k,
                        torch.tensor([t], device=q.device),
                        n_heads=c.level_heads[1],
                        paragraph_size=g,
                        top_k=c.route_top_k,
                    )[:, :, 0]  # (1, H, n_par)
                    picks = [set(routed[0, h].nonzero().flatten().tolist()) for h in range(routed.shape[1])]
                else:
                    idx, valid, _ = route_paragraphs(
                        q, k, n_heads=c.level_heads[1], paragraph_size=g, top_k=c.route_top_k, first_block=b, n_blocks=1
                    )
                    picks = [set(idx[0, h, 0][valid[0, h, 0]].tolist()) for h in range(idx.shape[1])]
                for picked in picks:
                    hits += bool(picked & needle)
                    chance += min(1.0, len(picked) * len(needle & set(range(b))) / max(1, b))
                    total += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train()
    return {"needle_routed": hits / total, "chance": chance / total}


def train_stages(name: str, stages: list[tuple[int, int]], seed: int, args, tokenizer, table, on_row) -> None:
    """One model trained through `stages` (length, steps) in order, weights and optimizer carried on; after each
    stage a row (learning curve, accuracy at that length, R1's routing rate) goes to `on_row`."""
    model = make_model(name, args, int(table.max()) + 1, max(length for length, _ in stages), seed).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / args.warmup))
    done = 0  # steps before this stage: seeds stay distinct across stages
    for length, steps in stages:
        micro = max(1, args.tokens_per_step // length) if args.stages else args.batch
        on_row(train_stage(model, opt, sched, name, length, steps, micro, done, seed, args, tokenizer, table))
        done += steps


def train_stage(model, opt, sched, name, length, steps, micro, done, seed, args, tokenizer, table) -> dict:
    curve, losses, digit_losses = [], [], []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        exs = [
            remap(make_example(tokenizer, length, (seed * 10**6 + done + step) * micro + i), table)
            for i in range(micro)
        ]
        ids, answer_labels = batch(exs, device=args.device)
        out = model(input_ids=ids, labels=ids if args.loss == "all" else answer_labels, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # the answer's own loss, whatever --loss trains: comparable across modes
            answer = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), answer_labels[:, 1:].flatten())
            n_ans = {len(e.input_ids) - e.answer_start for e in exs}  # the answer ends every example
            if len(n_ans) == 1:  # one answer length (one token per digit): each answer token's loss
                n = n_ans.pop()
                per_token = torch.nn.functional.cross_entropy(
                    out.logits[:, -n - 1 : -1].transpose(1, 2), ids[:, -n:], reduction="none"
                )  # (B, answer tokens): which of the key's tokens are learnt
                digit_losses.append(per_token.mean(0).tolist())
        losses.append(answer.item())
        if step % args.eval_every == 0 or step == steps:
            acc = accuracy(model, tokenizer, table, length, args.eval_examples, micro)
            last = digit_losses[-10:]  # keys of BPE pieces vary in length: then none
            per_digit = [sum(col) / len(col) for col in zip(*last)] if last else []
            curve.append(
                {
                    "step": step,
                    "accuracy": acc,
                    "answer_loss": sum(losses[-10:]) / len(losses[-10:]),
                    "answer_token_loss": per_digit,  # each answer token's loss, first to last
                }
            )
            print(
                f"  {name:>9} L={length} seed={seed} step {step:>4}: answer loss {curve[-1]['answer_loss']:.3f} acc {acc:.0%}"
                f" (by token: {' '.join(f'{x:.2f}' for x in per_digit)})",
                flush=True,
            )
    train_s = time.perf_counter() - t0
    routing = needle_routed(model, tokenizer, table, length, 32) if name == "r1" else {}
    if routing:
        print(f"  r1 routing: needle paragraph routed {routing['needle_routed']:.0%} (chance {routing['chance']:.0%})")
    return {
        **routing,
        "model": name,
        "length": length,
        "seed": seed,
        "steps": steps,
        "micro_batch": micro,
        "params": sum(p.numel() for p in model.parameters()),
        "train_s": train_s,
        "accuracy": curve[-1]["accuracy"],
        "curve": curve,
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from transformers import AutoTokenizer

    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights; TF32 matmuls on a GPU (no effect on CPU)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if args.split_digits:
        tokenizer = DigitSplit(tokenizer)
    ids_map = task_vocab(tokenizer)
    result = {
        "benchmark": "passkey_small",
        **provenance(__file__, argv),
        **{k: v for k, v in vars(args).items() if k != "json"},
        "vocab": int(ids_map.max()) + 1,
        "rows": [],
    }

    def on_row(row):  # every row saved as it finishes: a run cut short keeps them
        result["rows"].append(row)
        if args.json:
            from data_prep.atomic import atomic_write_text

            atomic_write_text(args.json, json.dumps(result, indent=2))

    if args.stages:
        for seed in args.seeds:
            for name in args.models:
                train_stages(name, args.stages, seed, args, tokenizer, ids_map, on_row)
    else:
        for length in args.lengths:
            for seed in args.seeds:
                for name in args.models:
                    train_stages(name, [(length, args.steps)], seed, args, tokenizer, ids_map, on_row)
    print()
    print(table(result["rows"]))
    return 0


def table(rows: list[dict]) -> str:
    """A Markdown table: every row's learning curve (accuracy at each evaluation), its last answer loss and
    accuracy, and R1's routing rate."""
    lines = [
        "| length | model | seed | steps | accuracy along the way (step: accuracy) | answer loss | accuracy "
        "| needle routed (chance) |",
        "|---:|---|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        routed = f"{r['needle_routed']:.0%} ({r['chance']:.0%})" if "needle_routed" in r else ""
        accs = ", ".join(f"{c['step']}: {c['accuracy']:.0%}" for c in r["curve"])
        lines.append(
            f"| {r['length']} | {r['model']} | {r['seed']} | {r['steps']} | {accs} | "
            f"{r['curve'][-1]['answer_loss']:.2f} | {r['accuracy']:.0%} | {routed} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
