"""Does compressed gradient reduction train as well as dense? A tiny LM on CPU, gloo ranks, same data and seeds.

    .venv/bin/python benchmarks/compression_convergence.py                 # 2 ranks, 300 steps, ~2 min on 2 cores
    .venv/bin/python benchmarks/compression_convergence.py --world 4 --steps 400

Trains the same tiny causal transformer on a synthetic first-order Markov language, once with DeepSpeed's dense
all-reduce and once per compression mode ("r1_compression": top-k 5% + int8 + error feedback). Writes the loss
curves to benchmarks/results/compression_convergence_w<world>.json and .png, and prints a table last: final
held-out loss of each run and its gap to dense (the goal is within 2%).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

VOCAB, SEQ = 64, 32


# -- data: a first-order Markov language, learnable, with a known entropy floor ------------------------------------


def markov_table(seed: int = 1234) -> torch.Tensor:
    """(VOCAB, VOCAB) next-token probabilities given the previous token; peaked (Dirichlet 0.1)."""
    g = torch.Generator().manual_seed(seed)
    gamma = torch._standard_gamma(torch.full((VOCAB, VOCAB), 0.1), generator=g) + 1e-12
    return gamma / gamma.sum(-1, keepdim=True)


def sample_sequences(table: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    """(num, SEQ + 1) int64 token sequences drawn from `table`."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(num, SEQ + 1, dtype=torch.long)
    out[:, 0] = torch.randint(VOCAB, (num,), generator=g)
    for t in range(1, SEQ + 1):
        probs = table[out[:, t - 1]]  # (num, VOCAB)
        out[:, t] = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return out


def entropy_floor(table: torch.Tensor) -> float:
    """Mean next-token entropy over uniformly drawn contexts (nats); a rough floor for the loss."""
    p = table.clamp_min(1e-12)
    return float(-(p * p.log()).sum(-1).mean())


# -- model: a tiny pre-norm causal transformer ----------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)  # (B, T, nh, hs)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyLM(nn.Module):
    def __init__(self, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.randn(SEQ, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]  # (B, T, dim)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, VOCAB)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


# -- one training run, executed on every rank -----------------------------------------------------------------------


def train_tiny_lm(compression: dict | None, *, steps: int, micro_batch: int = 16, lr: float = 3e-3,
                  eval_sequences: int = 256, seed: int = 0) -> dict:
    """Train TinyLM with DeepSpeed (ZeRO-0, fp32, AdamW) on this rank's shard; `compression` is the r1_compression
    section or None for dense. Returns this rank's train losses, the held-out loss and the last reducer stats."""
    import deepspeed
    import deepspeed.comm as dist

    from r1_ds.parallel.comm_hook import install_compression

    rank = dist.get_rank()
    torch.manual_seed(seed)
    model = TinyLM()
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.0, "torch_adam": True}},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
    }
    if compression is not None:
        config["r1_compression"] = compression
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    reducer = install_compression(engine, config)
    table = markov_table()
    data = sample_sequences(table, steps * micro_batch, seed=1000 + rank)  # this rank's shard
    held_out = sample_sequences(table, eval_sequences, seed=999)
    losses, ratios = [], []
    t0 = time.perf_counter()
    for step in range(steps):
        batch = data[step * micro_batch:(step + 1) * micro_batch]
        loss = lm_loss(engine(batch[:, :-1]), batch[:, 1:])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        if reducer is not None:
            ratios.append(reducer.last_stats()["ratio"])
    seconds = time.perf_counter() - t0
    engine.eval()
    with torch.no_grad():
        eval_loss = lm_loss(engine.module(held_out[:, :-1]), held_out[:, 1:]).item()
    return {
        "losses": losses,
        "eval_loss": eval_loss,
        "seconds": seconds,
        "stats": reducer.last_stats() if reducer is not None else None,
        "mean_ratio_compressed_steps": (sum(r for r in ratios if r > 1) / max(1, sum(r > 1 for r in ratios))),
        "entropy_floor": entropy_floor(table),
    }


def compression_section(mode: str, warmup_steps: int) -> dict:
    """The r1_compression section of the curves: the issue's numbers, timing-based fallback off (deterministic)."""
    return {"enabled": True, "mode": mode, "topk_ratio": 0.05, "bits": 8, "error_feedback": True,
            "warmup_steps": warmup_steps, "auto_fallback": False}


def main(argv: list[str] | None = None) -> None:
    from tests.dist import run_distributed

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2, help="gloo ranks (data parallel)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=20, help="r1_compression.warmup_steps (dense steps first)")
    ap.add_argument("--modes", default="leader,allgather", help="compression modes to compare with dense")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="folder for JSON + PNG")
    args = ap.parse_args(argv)

    runs = {"dense": None}
    runs.update({m: compression_section(m, args.warmup) for m in args.modes.split(",") if m})
    results = {}
    for name, section in runs.items():
        t0 = time.time()
        per_rank = run_distributed(train_tiny_lm, args.world, section, steps=args.steps, timeout=3600)
        curve = [sum(r["losses"][s] for r in per_rank) / args.world for s in range(args.steps)]
        evals = {r["eval_loss"] for r in per_rank}
        assert len(evals) == 1, f"{name}: replicas disagree on the held-out loss {evals}"
        results[name] = {"config": section, "train_loss": curve, "eval_loss": per_rank[0]["eval_loss"],
                         "mean_ratio": per_rank[0]["mean_ratio_compressed_steps"], "wall_s": time.time() - t0,
                         "last_stats": per_rank[0]["stats"]}
        print(f"{name}: held-out loss {results[name]['eval_loss']:.4f} ({time.time() - t0:.0f} s)", flush=True)

    floor = entropy_floor(markov_table())
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"compression_convergence_w{args.world}")
    meta = {"world": args.world, "steps": args.steps, "warmup_steps": args.warmup, "model": "TinyLM dim 64, 2 layers",
            "optimizer": "AdamW lr 3e-3, clip 1.0", "micro_batch": 16, "seq": SEQ, "entropy_floor": floor,
            "torch": torch.__version__}
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "runs": results}, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, r in results.items():
            k = 10  # moving average, the raw per-step loss is noisy
            y = r["train_loss"]
            smooth = [sum(y[max(0, i - k + 1):i + 1]) / len(y[max(0, i - k + 1):i + 1]) for i in range(len(y))]
            ax.plot(smooth, label=f"{name} (held-out {r['eval_loss']:.3f})")
        ax.axhline(floor, color="grey", ls=":", label=f"entropy floor {floor:.3f}")
        ax.axvline(args.warmup, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (10-step mean over ranks)")
        ax.set_title(f"top-5% + int8 + error feedback vs dense, {args.world} gloo ranks")
        ax.legend()
        fig.tight_layout()
        fig.savefig(stem + ".png", dpi=120)
    except ImportError:
        print("matplotlib missing: no PNG written")

    dense = results["dense"]["eval_loss"]
    print("\n| run | held-out loss | vs dense | bytes ratio (dense/sent) |\n|---|---|---|---|")
    for name, r in results.items():
        gap = (r["eval_loss"] - dense) / dense * 100
        ratio = "1" if name == "dense" else f"{r['mean_ratio']:.1f}x"
        print(f"| {name} | {r['eval_loss']:.4f} | {gap:+.2f}% | {ratio} |")
    print(f"(entropy floor {floor:.4f}; {args.world} ranks, {args.steps} steps, compression after {args.warmup})")
    if not math.isfinite(dense):
        raise SystemExit("dense run diverged")


if __name__ == "__main__":
    main()
