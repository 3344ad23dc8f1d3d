"""Ablation at small size: the full R1 against R1 with each attention level removed in turn and with the learned
level gate replaced by fixed equal weights; held-out loss at equal tokens.

    python benchmarks/quality_corpus.py --out .quality_data/small --max-code-mb 10 --max-text-mb 2 \
        --vocab-size 4096 --seq-len 512                                   # the small corpus (CPU, ~1 min)
    python benchmarks/quality_ablation.py --data .quality_data/small/pack   # CPU, minutes
    python benchmarks/quality_ablation.py --data .quality_data/pack --device cuda --hidden 512 --layers 8 \
        --seq-len 2048 --steps 400 --batch 8                               # larger, on a GPU

Variants (R1Config fields; docs/quality.md):
  full      attention_levels [1, 2, 3], learned gate
  no_L1     [2, 3]   (no local window: the paragraph level's routed paragraphs and summaries only)
  no_L2     [1, 3]
  no_L3     [1, 2]
  no_gate   [1, 2, 3], level_gate false (alpha = 1/2 for every level)
Every variant starts from the same initial weights (same seed, same parameter layout) and sees the same rows in the
same order; plain AdamW (weight decay 0.1 on matrices), linear warm-up then cosine (r1_ds.train.WarmupCosine),
gradient clipping 1.0, fp32. Held-out loss: r1_ds.evaluation.perplexity.heldout_loss (plain cross entropy) on the
held-out split. Repeated over --seeds, the table shows the mean and the spread (max - min) per variant, and each
variant's difference from the full model. Writes JSON and a markdown table with provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.quality import provenance  # noqa: E402 (after the sys.path line above)

VARIANTS = {
    "full": {"attention_levels": [1, 2, 3], "level_gate": True},
    "no_L1": {"attention_levels": [2, 3], "level_gate": True},
    "no_L2": {"attention_levels": [1, 3], "level_gate": True},
    "no_L3": {"attention_levels": [1, 2], "level_gate": True},
    "no_gate": {"attention_levels": [1, 2, 3], "level_gate": False},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(ROOT, ".quality_data", "small", "pack"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--level-heads", nargs=3, type=int, default=[2, 4, 8])
    p.add_argument("--local-window", type=int, default=32)
    p.add_argument("--paragraph", type=int, default=16)
    p.add_argument("--document", type=int, default=64)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-sequences", type=int, default=0, help="held-out rows (0: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="results (default: benchmarks/results/quality_ablation_<device>.json, and .md)")
    return p.parse_args(argv)


def model_config(args, vocab_size: int, variant: str):
    from r1_ds.model import R1Config

    return R1Config(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=-(-args.hidden * 8 // 3 // 16) * 16,
        num_hidden_layers=args.layers,
        level_heads=args.level_heads,
        local_window=args.local_window,
        paragraph_size=args.paragraph,
        document_size=args.document,
        route_top_k=args.top_k,
        max_position_embeddings=args.seq_len,
        label_smoothing=0.0,
        **VARIANTS[variant],
    )


def train_variant(args, variant: str, seed: int, train_ds, heldout_ds) -> dict:
    from r1_ds.evaluation.perplexity import heldout_loss
    from r1_ds.model import R1ForCausalLM
    from r1_ds.train import WarmupCosine, param_groups

    vocab = -(-train_ds.vocab_size // 64) * 64
    torch.manual_seed(seed)  # the same initial weights for every variant (one parameter layout)
    model = R1ForCausalLM(model_config(args, vocab, variant)).to(args.device)
    model.set_attn_implementation("flex_attention" if args.device.startswith("cuda") else "eager")
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=args.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(max(1, args.steps // 20), args.steps, 0.1))
    order = np.random.default_rng(seed).permutation(len(train_ds))
    need = args.steps * args.batch
    order = np.resize(order, need)  # repeats the permutation if the set is smaller than the run
    model.train()
    t0 = time.perf_counter()
    for step in range(args.steps):
        x = train_ds.batch(order[step * args.batch : (step + 1) * args.batch], args.seq_len).to(args.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda")):
            loss = model(input_ids=x, labels=x, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0
    res = heldout_loss(
        model, heldout_ds, seq_len=args.seq_len, batch_size=args.batch, max_sequences=args.eval_sequences or None
    )
    return {
        "variant": variant,
        "seed": seed,
        "heldout_loss": res["loss"],
        "heldout_tokens": res["tokens"],
        "last_train_loss": loss.item(),
        "train_s": train_s,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def summarise(runs: list[dict], variants: list[str]) -> list[dict]:
    full = {r["seed"]: r["heldout_loss"] for r in runs if r["variant"] == "full"}
    out = []
    for v in variants:
        losses = {r["seed"]: r["heldout_loss"] for r in runs if r["variant"] == v}
        diffs = [losses[s] - full[s] for s in losses if s in full]
        out.append(
            {
                "variant": v,
                "mean": float(np.mean(list(losses.values()))),
                "spread": float(np.ptp(list(losses.values()))),
                "vs_full": float(np.mean(diffs)) if diffs else None,
                "vs_full_min": float(min(diffs)) if diffs else None,
                "vs_full_max": float(max(diffs)) if diffs else None,
            }
        )
    return out


def table(summary: list[dict], seeds: list[int]) -> str:
    lines = [
        f"| variant | held-out loss (mean of {len(seeds)} seeds) | spread over seeds | vs full (mean; min..max) |",
        "|---|---|---|---|",
    ]
    for s in summary:
        vs = (
            ""
            if s["variant"] == "full" or s["vs_full"] is None
            else f"{s['vs_full']:+.4f} ({s['vs_full_min']:+.4f}..{s['vs_full_max']:+.4f})"
        )
        lines.append(f"| {s['variant']} | {s['mean']:.4f} | {s['spread']:.4f} | {vs} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from r1_ds.data import PackedShards

    train_ds = PackedShards(os.path.join(args.data, "train"))
    heldout_ds = PackedShards(os.path.join(args.data, "heldout"))
    if args.seq_len > train_ds.seq_len:
        print(
            f"quality_ablation: --seq-len {args.seq_len} is longer than the shards' rows ({train_ds.seq_len}); "
            f"use --seq-len <= {train_ds.seq_len}",
            file=sys.stderr,
        )
        return 2
    device = args.device.split(":")[0]
    path = args.json or os.path.join(ROOT, "benchmarks", "results", f"quality_ablation_{device}.json")
    made = provenance(__file__, argv)  # the code that runs, not the tree at the end
    runs = []
    for seed in args.seeds:
        for v in args.variants:
            runs.append(train_variant(args, v, seed, train_ds, heldout_ds))
            print(json.dumps(runs[-1]), flush=True)
    summary = summarise(runs, args.variants)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    result = {
        "benchmark": "quality_ablation",
        **made,
        "settings": settings,
        "tokens_per_variant": args.steps * args.batch * args.seq_len,
        "runs": runs,
        "summary": summary,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    md = table(summary, args.seeds)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(
            f"# R1 ablation at small size\n\n{result['date']}, {result['card']}, commit {result['commit']}, "
            f"`{result['command']}`\n\n{runs[0]['params_m']:.2f}M parameters, "
            f"{result['tokens_per_variant']:,} training tokens per variant, held-out "
            f"{runs[0]['heldout_tokens']:,} tokens.\n\n{md}\n"
        )
    print()
    print(md)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
