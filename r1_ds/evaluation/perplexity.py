"""Held-out loss and perplexity of a causal LM on packed shards: plain next-token cross entropy, no
label smoothing (the training loss smooths; this does not), averaged over every predicted token."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def heldout_loss(
    model, dataset, *, seq_len: int | None = None, batch_size: int = 8, max_sequences: int | None = None, device=None
) -> dict:
    """{"loss", "perplexity", "tokens", "sequences"} of `model` (logits from `model(input_ids=...)`)
    over the first `max_sequences` rows of `dataset` (a PackedShards or anything with `batch`)."""
    seq_len = seq_len or dataset.seq_len
    count = len(dataset) if max_sequences is None else min(max_sequences, len(dataset))
    if count == 0 or seq_len < 2:
        raise ValueError(f"held-out loss needs >= 1 sequence of >= 2 tokens; got {count} x {seq_len}")
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, count, batch_size):
        x = dataset.batch(np.arange(start, min(start + batch_size, count)), seq_len).to(device)  # (B, T)
        logits = model(input_ids=x, use_cache=False).logits[:, :-1]  # (B, T-1, V): position t predicts token t+1
        total += float(
            F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        )
        tokens += x[:, 1:].numel()
    model.train(was_training)
    loss = total / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "tokens": tokens,
        "sequences": count,
        "seq_len": seq_len,
    }
