"""Sampled completions for many prompts, batched through the model's `generate()`.

Any prompts share a batch, padded on the left (a decoder continues each row from its last token); the
attention mask keeps the pads out of attention and the positions. Requests are sorted by prompt length
first, so a batch holds prompts of similar length and little padding. With `mixed_lengths=False` a batch
holds prompts of one token length only (the n samples of a prompt, and prompts of the same length): R1
computes the rows of a padded batch length by length (its attention groups count from a row's first real
token), each step pooling and rotating their history afresh, where a batch without pads decodes in one pass
with the summaries kept beside the cache; for R1 it is several times faster per token
(benchmarks/results/decode_cpu.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

log = logging.getLogger("r1_ds.evaluation.generation")


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first stop sequence (Codex's truncation of a function body)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def length_sorted_batches(lengths: Sequence[int], repeats: int, batch_size: int) -> list[list[int]]:
    """Request indices (prompt p's r-th sample is p * repeats + r), longest prompts first, in batches of at
    most `batch_size`: the prompts of a batch may differ in length, by as little as the sort allows."""
    order = sorted(range(len(lengths)), key=lambda p: -lengths[p])  # stable: equal lengths keep their order
    reqs = [p * repeats + r for p in order for r in range(repeats)]
    return [reqs[i : i + batch_size] for i in range(0, len(reqs), batch_size)]


def equal_length_batches(lengths: Sequence[int], repeats: int, batch_size: int) -> list[list[int]]:
    """Request indices as in length_sorted_batches, longest prompts first, but each batch holds prompts of one
    length only (no padding), of at most `batch_size` requests."""
    by_length: dict[int, list[int]] = {}
    for p in sorted(range(len(lengths)), key=lambda p: -lengths[p]):
        by_length.setdefault(lengths[p], []).extend(p * repeats + r for r in range(repeats))
    return [reqs[i : i + batch_size] for reqs in by_length.values() for i in range(0, len(reqs), batch_size)]


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, longest row): each row right-aligned after pads."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


class StopSequences(StoppingCriteria):
    """A `generate()` stopping criterion: a row is done once its completion (the tokens after the prompt) holds a
    stop sequence, and `generate()` ends when every row is done instead of running to max_new_tokens. The text
    after the first stop is cut off anyway (truncate_at_stops), so stopping there changes no completion.
    Completions are decoded every `every` steps, not every step: a few extra tokens cost less than decoding."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_width: int, every: int = 8):
        self.tokenizer, self.stops, self.prompt_width, self.every = tokenizer, tuple(stops), prompt_width, every
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = input_ids.shape[1] - self.prompt_width
        if new > 0 and new % self.every == 0:
            open_rows = (~self.done).nonzero().squeeze(1).tolist()
            texts = self.tokenizer.batch_decode(
                input_ids[open_rows, self.prompt_width :].tolist(), skip_special_tokens=True
            )
            for row, text in zip(open_rows, texts):
                if any(stop in text for stop in self.stops):
                    self.done[row] = True
        return self.done.clone()


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 0.95,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    stops: Sequence[str] = (),
    seed: int = 0,
    stop_early: bool = True,
    mixed_lengths: bool = True,
) -> list[list[str]]:
    """n completions per prompt (greedy when temperature == 0: one generation, repeated n times). stop_early:
    a batch ends once each of its rows has a stop sequence (StopSequences) rather than at max_new_tokens.
    mixed_lengths: prompts of different lengths share a batch (left-padded); False: batches without padding."""
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
    batching = length_sorted_batches if mixed_lengths else equal_length_batches
    batches = batching([len(e) for e in encoded], draws, batch_size)
    start = time.perf_counter()
    for done, batch in enumerate(batches):
        if done and done % 20 == 0:
            log.info("generation: %d of %d batches in %.0f s", done, len(batches), time.perf_counter() - start)
        ids, mask = pad_left([encoded[r // draws] for r in batch], pad)
        ids, mask = ids.to(device), mask.to(device)
        new = min(max_new_tokens, max_pos - ids.shape[1])
        stopping = [StopSequences(tokenizer, stops, ids.shape[1])] if stop_early and stops else None
        gen = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None if greedy else 0,
            pad_token_id=pad,  # top-p alone, as Codex
            stopping_criteria=StoppingCriteriaList(stopping) if stopping else None,
        )
        for r, row in zip(batch, gen[:, ids.shape[1] :].tolist()):
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            out[r // draws].append(truncate_at_stops(tokenizer.decode(row, skip_special_tokens=True), stops))
    return [c * n if greedy else c for c in out]
