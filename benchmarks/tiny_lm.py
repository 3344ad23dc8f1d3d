"""A tiny causal LM on a synthetic Markov language, trained with DeepSpeed dense or with r1_compression.

Shared by tests/test_comm_hook.py (compressed training converges like dense) and
benchmarks/compression_convergence.py (the loss curves): the test checks the model and run that the benchmark
plots. Editing this file changes both; editing the benchmark script does not touch the tests.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def train_tiny_lm(
    compression: dict | None,
    *,
    steps: int,
    micro_batch: int = 16,
    lr: float = 3e-3,
    eval_sequences: int = 256,
    seed: int = 0,
) -> dict:
    """Train TinyLM with DeepSpeed (ZeRO-0, fp32, AdamW) on this rank's shard; `compression` is the r1_compression
    section or None for dense. Returns this rank's train losses, the held-out loss and the last reducer stats."""
    import deepspeed
    import deepspeed.comm as dist

    from r1_ds.parallel.comm_hook import install_compression
    from r1_ds.parallel.compression_config import CompressionConfig

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
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    reducer = install_compression(engine, None if compression is None else CompressionConfig.from_dict(compression))
    table = markov_table()
    data = sample_sequences(table, steps * micro_batch, seed=1000 + rank)  # this rank's shard
    held_out = sample_sequences(table, eval_sequences, seed=999)
    losses, ratios = [], []
    t0 = time.perf_counter()
    for step in range(steps):
        batch = data[step * micro_batch : (step + 1) * micro_batch]
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
    return {
        "enabled": True,
        "mode": mode,
        "topk_ratio": 0.05,
        "bits": 8,
        "error_feedback": True,
        "warmup_steps": warmup_steps,
        "auto_fallback": False,
    }
