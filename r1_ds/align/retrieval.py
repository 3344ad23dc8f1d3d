"""Retrieval metrics from a similarity matrix."""

from __future__ import annotations

import torch


def recall_at_k(sim: torch.Tensor, k: int) -> float:
    """Recall@k of a square similarity matrix: the share of queries whose match is among the top `k` candidates.

    `sim` is (N, N): row i holds the scores of query i against the N candidates, and candidate i is the one
    match of query i (the diagonal). The rank of the match counts every other candidate that scores at least as
    high (ties go against the match), so constant scores give 0 rather than 1. Chance level is k / N.
    """
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"recall_at_k needs a square (queries x candidates) matrix, got shape {tuple(sim.shape)}")
    if k < 1:
        raise ValueError(f"recall_at_k: k={k} must be >= 1")
    n = sim.shape[0]
    if n == 0:
        return float("nan")
    sim = sim.float()
    diag = sim.diagonal().unsqueeze(1)
    others = (sim >= diag) & ~torch.eye(n, dtype=torch.bool, device=sim.device)
    rank = others.sum(dim=1)  # 0 = the match scores strictly highest
    return float((rank < k).float().mean())
