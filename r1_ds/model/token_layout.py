"""Which tokens of a batch form one sequence: padding (attention_mask zeros) and packed documents
(position_ids restarting at 0), as transformers defines them for causal LMs.

R1's levels work on token groups (paragraphs of `paragraph_size` tokens, documents of `document_size`)
counted from a sequence's first token. A pad token therefore cannot simply be masked out as in a
dense-attention model: left padding would shift every group boundary. Instead each sequence (a row's
valid tokens, or one packed document of a row) is taken out on its own, with its tokens renumbered
from 0, so a row of a padded batch gives what the prompt alone gives. A pad position gets zeros from
attention, and its final hidden state is that of the last token before it (repeat_last_token); its
logits mean nothing else, as in any HF model. Sequences are computed one at a time: this path serves
generation and evaluation (padded training batches are correct but slower); `r1-ds train` never takes it.

Accepted:
  - attention_mask (B, past + new) of 0/1, zeros anywhere (left or right padding, holes);
  - position_ids (B or 1, new) equal to the positions the mask implies (the valid tokens counted from 0,
    what `generate` and the HF collators pass), where a pad token's position id is ignored;
  - without a cache: position_ids that restart at 0 among a row's valid tokens, each run counting
    0, 1, 2, ...: packed documents, attended separately (DataCollatorWithFlattening's form).
Anything else raises ValueError: a position id R1 cannot honour (it is not the token's place in its
group structure) is an error, never a silently different answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hierarchical_attention import (
    hierarchical_attention_decode,
    hierarchical_attention_eager,
    hierarchical_attention_flex,
)


@dataclass
class TokenLayout:
    """The sequences of a batch that is not one dense causal sequence per row.

    segments: (row, hist, query) per sequence: hist (n,) its tokens' indices in the row's past + new
    tokens, in order; query (m,) the indices among the new tokens of its last m tokens (the ones this
    forward computes). Renumbered, the sequence's tokens sit at 0 .. n - 1, its queries at n - m .. n - 1.
    """

    segments: list[tuple[int, torch.Tensor, torch.Tensor]]
    packed: bool  # position_ids split rows into documents: a cache of this forward cannot be continued
    source: torch.Tensor  # (B, new): the new token whose output each new position repeats (itself, or for a pad
    # the last token before it; see repeat_last_token)


def _check_mask(attention_mask: torch.Tensor, batch: int, total: int) -> tuple[torch.Tensor, bool]:
    """(the mask as bool, whether every token is valid), with one host sync for both checks."""
    if attention_mask.dim() != 2:
        raise ValueError(
            f"R1: attention_mask has shape {tuple(attention_mask.shape)}; R1 takes the 2-D (batch, past + new "
            "tokens) mask of 0/1 (its three levels build their own masks). Fix: pass the tokenizer's attention_mask."
        )
    if tuple(attention_mask.shape) != (batch, total):
        raise ValueError(
            f"R1: attention_mask has shape {tuple(attention_mask.shape)}, but the batch has {batch} rows of "
            f"{total} tokens (cached + new). Fix: pass the mask of every token so far, as generate() does."
        )
    binary, full = torch.stack(
        [((attention_mask == 0) | (attention_mask == 1)).all(), (attention_mask == 1).all()]
    ).tolist()
    if not binary:
        raise ValueError("R1: attention_mask must hold only 0 (padding) and 1 (token). Fix: pass the tokenizer's mask.")
    return attention_mask.bool(), full


def _packed_runs(pos: torch.Tensor) -> bool:
    """pos (n,) = concatenated runs 0, 1, 2, ...: starts at 0 and each id is 0 or the previous + 1."""
    if pos.numel() == 0:
        return True
    step = pos[1:] - pos[:-1]
    return bool(pos[0] == 0) and bool(((pos[1:] == 0) | (step == 1)).all())


def token_layout(
    attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, *, batch: int, past: int, new: int, device
) -> TokenLayout | None:
    """The layout of a forward over `new` tokens after `past` cached ones; None when every row is one dense
    sequence (the fast path). Raises ValueError for masks and position ids R1 cannot honour."""
    total = past + new
    valid, full = (None, True) if attention_mask is None else _check_mask(attention_mask.to(device), batch, total)
    packed = False
    if position_ids is not None:
        pos = position_ids.to(device).long()
        if pos.dim() != 2 or pos.shape[-1] != new or pos.shape[0] not in (1, batch):
            raise ValueError(
                f"R1: position_ids has shape {tuple(pos.shape)}; expected ({batch}, {new}) "
                "(or (1, new)), one id per new token."
            )
        pos = pos.expand(batch, new)
        if valid is None:
            implied = torch.arange(past, total, device=device).expand(batch, new)
            new_valid = torch.ones(batch, new, dtype=torch.bool, device=device)
        else:
            implied = (valid.long().cumsum(-1) - 1)[:, past:]
            new_valid = valid[:, past:]
        if not bool((pos == implied)[new_valid].all()):
            packed = past == 0 and all(_packed_runs(pos[b][new_valid[b]]) for b in range(batch))
            if not packed:
                raise ValueError(
                    "R1: position_ids disagree with the token order. R1's paragraph and document groups are "
                    "counted from a sequence's first token, so a token's position must be its index among the "
                    "row's unmasked tokens (attention_mask), or, without a cache, restart at 0 where a packed "
                    "document starts (runs 0, 1, 2, ...). Fix: pass attention_mask.cumsum(-1) - 1 (or no "
                    "position_ids), or pack documents as consecutive runs from 0."
                )
    if not packed and full:
        return None
    ar = torch.arange(total, device=device)
    last = ar.expand(batch, total) if valid is None else torch.cummax(torch.where(valid, ar, -1), dim=-1).values
    source = torch.where(last[:, past:] >= past, last[:, past:], ar[past:]) - past
    if not packed:  # one sequence per row: its valid tokens, the new ones last (a few host syncs, not per row)
        return TokenLayout(_row_segments(valid, past), packed, source)
    segments = []
    for b in range(batch):
        hist = torch.arange(total, device=device) if valid is None else valid[b].nonzero()[:, 0]
        starts = (pos[b, hist - past] == 0).nonzero()[:, 0].tolist()  # past == 0: hist indexes new tokens
        runs = torch.tensor_split(hist, starts[1:]) if starts else (hist,)
        for run in runs:
            query = run[run >= past] - past
            if query.numel():
                segments.append((b, run, query))
    return TokenLayout(segments, packed, source)


def _row_segments(valid: torch.Tensor, past: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(row, hist, query) of each row of a (B, past + new) mask with at least one valid new token: hist its valid
    tokens (ascending, so the valid new ones are its last m), query those m as indices among the new tokens."""
    n_all, n_new = torch.stack([valid.sum(-1), valid[:, past:].sum(-1)]).tolist()
    hists = torch.split(valid.nonzero()[:, 1], n_all)  # nonzero is row-major: each row's tokens in order
    return [(b, h, h[len(h) - m :] - past) for b, (h, m) in enumerate(zip(hists, n_new)) if m]


def repeat_last_token(h: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
    """h (B, T, d) with each pad position holding the output of the last token before it in its row.
    generate() reads the next token off the last column: with right padding that column is a pad, and
    this makes it predict what the prompt's last token predicts (then the new token, placed after the
    pads, sits right after the prompt once the pads are taken out). Any HF model leaves pad outputs
    undefined, so this costs nothing to what they mean."""
    if layout is None:
        return h
    return h.gather(1, layout.source[..., None].expand_as(h))


def attention_by_segment(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_hist: torch.Tensor,
    layout: TokenLayout,
    *,
    flex: bool,
    **kernel_kwargs,
):
    """The three level outputs (B, Tq, d) each, every sequence of `layout` computed on its own and
    renumbered from 0: q (B, Tq, d) the new queries; k, v, q_hist (B, past + Tq, d) the history. With
    `flex`, a sequence computed whole (no cache) takes the flex kernel, without it the eager reference; a decoding
    step (queries after cached tokens) takes the gathered decode path (the reference's result) either way. Sequences of one length and query count (the samples of one prompt,
    prompts of one length) are computed together, as the rows of one call.
    Pad queries output zeros."""
    groups: dict[tuple[int, int], list] = {}  # sequences of one length and query count share one call
    for b, hist, query in layout.segments:
        groups.setdefault((hist.numel(), query.numel()), []).append((b, hist, query))
    outs = [[], [], []]
    rows, cols = [], []
    for (n, m), segs in groups.items():
        row = torch.tensor([b for b, _, _ in segs], device=q.device)[:, None]  # (R, 1)
        hist = torch.stack([h for _, h, _ in segs])  # (R, n)
        query = torch.stack([c for _, _, c in segs])  # (R, m)
        qs, ks, vs = q[row, query], k[row, hist], v[row, hist]  # (R, m, d), (R, n, d), (R, n, d)
        if m < n:  # decoding: the new queries are the newest of their sequence
            levels = hierarchical_attention_decode(qs, ks, vs, q_hist[row, hist], **kernel_kwargs)
        elif flex:
            levels = hierarchical_attention_flex(qs, ks, vs, **kernel_kwargs)
        else:
            levels = hierarchical_attention_eager(qs, ks, vs, q_hist[row, hist], range(n), **kernel_kwargs)
        for out, h in zip(outs, levels):
            out.append(h.flatten(0, 1))
        rows.append(row.expand(-1, m).flatten())
        cols.append(query.flatten())
    B, Tq, d = q.shape
    if not rows:
        return tuple(q.new_zeros(B, Tq, d) for _ in range(3))
    where = (torch.cat(rows), torch.cat(cols))
    return tuple(q.new_zeros(B, Tq, d).index_put(where, torch.cat(out)) for out in outs)
