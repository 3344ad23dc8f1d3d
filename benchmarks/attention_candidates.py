"""Candidate replacements for two of the flex path's kernels, kept beside the benchmark until a GPU run
decides (benchmarks/profile_attention.py times them against the kernels in use; the tests check them
against the eager reference).

L1 as explicit banded attention. The window (128 tokens in the GPU presets) fits in two blocks, so a
query block's keys are the previous block and its own: two batched GEMMs over (block x 2 block) score
tiles, and a masked softmax that inductor fuses. Flex runs the same band at head size 256 (8 heads of
d = 2048) with small tiles: ~5.6 ms per 64k tokens at 8k on an H200 (benchmarks/results/attention.md),
twice its time at head size 128.

L3 as explicit attention. Its keys are 1 + T / G document summaries (9 at 8k, 65 at 64k), so the
(T, 1 + T/G) score matrix is small and two thin GEMMs replace SDPA's masked path.

Both take operands as `_flex_inputs` lays them out: (B, Tp, d) with heads folded, rotary applied, Tp a
multiple of the block.
"""

from __future__ import annotations

import torch

from r1_ds.model.hierarchical_attention import merge_heads, split_heads


def window_attention_banded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, n_heads: int, window: int,
                            block: int) -> torch.Tensor:
    """Causal sliding window (q - window < kv <= q) with window <= block. -> (B, H, Tp, hd) like flex."""
    B, Tp, d = q.shape
    if window > block or Tp % block:
        raise ValueError(f"window={window} must be <= block={block} and the length {Tp} a multiple of it")
    H, hd, nb = n_heads, d // n_heads, Tp // block

    def blocks(x):  # (B, Tp, d) -> (B, H, nb, block, hd)
        return x.view(B, nb, block, H, hd).permute(0, 3, 1, 2, 4)

    def with_previous(x):  # keys of query block i: blocks i - 1 and i, (B, H, nb, 2 block, hd)
        xb = blocks(x)
        return torch.cat([torch.nn.functional.pad(xb, (0, 0, 0, 0, 1, 0))[:, :, :-1], xb], dim=3)

    kk, vv = with_previous(k), with_previous(v)
    i = torch.arange(block, device=q.device)[:, None] + block  # query position inside the pair of blocks
    j = torch.arange(2 * block, device=q.device)[None, :]
    band = (j <= i) & (j > i - window)
    first = torch.arange(nb, device=q.device)[:, None, None] == 0
    mask = band & ~(first & (j < block))  # block 0 has no previous block (its slot is zero padding)
    s = (blocks(q) @ kk.transpose(-1, -2)).float() * hd**-0.5
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1).to(q.dtype)
    return (p @ vv).reshape(B, H, Tp, hd)


def document_attention_explicit(qr: torch.Tensor, k3: torch.Tensor, v3: torch.Tensor, *, n_heads: int,
                                document_size: int, length: int) -> torch.Tensor:
    """L3 over [null, document summaries] with an explicit (Tp, 1 + n_doc) softmax. -> (B, length, d)"""
    B, Tp, d = qr.shape
    q, k, v = split_heads(qr, n_heads), split_heads(k3, n_heads), split_heads(v3, n_heads)
    tpos = torch.arange(Tp, device=qr.device)[:, None]
    jd = torch.arange(k3.shape[1], device=qr.device)[None, :]
    mask = (jd == 0) | (jd - 1 < tpos // document_size)  # null, then complete groups before the query's
    s = (q @ k.transpose(-1, -2)).float() * (d // n_heads) ** -0.5
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1).to(q.dtype)
    return merge_heads(p @ v)[:, :length]
