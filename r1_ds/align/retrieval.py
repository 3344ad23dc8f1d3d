"""Retrieval recall@k from a similarity matrix: the one implementation, used by the alignment trainer's held-out
metrics and by `r1-ds eval retrieval` (r1_ds/evaluation/retrieval.py)."""

from __future__ import annotations

import torch


def recall_at_k(sim: torch.Tensor, k: int, positives: torch.Tensor | None = None) -> float:
    """Recall@k: the share of queries (rows of `sim`, (Q, C)) with a matching candidate among the top `k`.

    positives: bool (Q, C), the matches of each query (several allowed, e.g. the 5 captions of an image); None: `sim`
    is square and candidate i is the one match of query i (the diagonal). A query's rank is the number of
    non-matching candidates that score at least as high as its best match (ties go against the match), so constant
    scores give 0 rather than 1. Chance level with one match is k / C.
    """
    if sim.dim() != 2:
        raise ValueError(f"recall_at_k needs a (queries x candidates) matrix, got shape {tuple(sim.shape)}")
    if positives is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(
                f"recall_at_k without positives needs a square matrix (match i = candidate i), got "
                f"shape {tuple(sim.shape)}"
            )
        positives = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    elif positives.shape != sim.shape:
        raise ValueError(
            f"recall_at_k: sim {tuple(sim.shape)} and positives {tuple(positives.shape)} must be one "
            "(queries, candidates) shape"
        )
    if k < 1:
        raise ValueError(f"recall_at_k: k={k} must be >= 1")
    if sim.shape[0] == 0:
        return float("nan")
    positives = positives.to(device=sim.device, dtype=torch.bool)
    if not bool(positives.any(1).all()):
        raise ValueError("recall_at_k: every query needs at least one positive candidate")
    sim = sim.float()
    best = sim.masked_fill(~positives, float("-inf")).max(1, keepdim=True).values  # (Q, 1)
    rank = ((sim >= best) & ~positives).sum(1)  # (Q,): 0 = the best match scores strictly highest
    return float((rank < k).float().mean())
