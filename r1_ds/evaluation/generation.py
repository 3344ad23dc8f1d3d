"""Sampled completions for many prompts, batched through the model's `generate()`.

Batches hold prompts of equal token length, so no row is padded: R1 rejects left padding, the only
padding a decoder can generate with. n samples of one prompt are one batch (split at batch_size), so
pass@k sampling is batched whatever the prompts. `batches_of_equal_length` is the one place to change
once left padding works (then any prompts can share a batch).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import torch

log = logging.getLogger("r1_ds.evaluation.generation")


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first stop sequence (Codex's truncation of a function body)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def batches_of_equal_length(lengths: Sequence[int], repeats: int, batch_size: int) -> list[list[int]]:
    """Request indices (prompt p's r-th sample is p * repeats + r) grouped into batches of at most
    `batch_size` whose prompts have the same length."""
    by_len: dict[int, list[int]] = defaultdict(list)
    for p, n in enumerate(lengths):
        by_len[n].extend(p * repeats + r for r in range(repeats))
    return [reqs[i:i + batch_size] for _, reqs in sorted(by_len.items()) for i in range(0, len(reqs), batch_size)]


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: Sequence[str], *, n: int = 1, temperature: float = 0.0,
                         top_p: float = 0.95, max_new_tokens: int = 128, batch_size: int = 16,
                         stops: Sequence[str] = (), seed: int = 0) -> list[list[str]]:
    """n completions per prompt (greedy when temperature == 0: one generation, repeated n times)."""
    greedy = temperature <= 0
    draws = 1 if greedy else n
    max_pos = int(getattr(model.config, "max_position_embeddings", 1 << 30))
    keep = max(1, max_pos - max_new_tokens)
    encoded = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False).input_ids
        if len(ids) > keep:  # the model cannot see past max_position_embeddings: keep the prompt's end
            log.debug("prompt of %d tokens cut to its last %d", len(ids), keep)
            ids = ids[-keep:]
        encoded.append(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    out: list[list[str]] = [[] for _ in prompts]
    for batch in batches_of_equal_length([len(e) for e in encoded], draws, batch_size):
        ids = torch.tensor([encoded[r // draws] for r in batch], device=device)
        new = min(max_new_tokens, max_pos - ids.shape[1])
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=not greedy,
                             temperature=None if greedy else temperature, top_p=None if greedy else top_p,
                             top_k=None if greedy else 0, pad_token_id=pad)  # top-p alone, as Codex
        for r, row in zip(batch, gen[:, ids.shape[1]:].tolist()):
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in row:
                row = row[:row.index(tokenizer.eos_token_id)]
            out[r // draws].append(truncate_at_stops(tokenizer.decode(row, skip_special_tokens=True), stops))
    return [c * n if greedy else c for c in out]
