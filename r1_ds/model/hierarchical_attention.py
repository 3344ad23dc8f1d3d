"""Hierarchical attention kernels: the eager reference and the FlexAttention fast path.

Everything here is a pure function of tensors (no modules, no parameters), written so that it can
be read against docs/architecture.md. Shapes: B batch, T keys (history), Tq queries, d width,
H heads of one level, hd = d // H its head size, g paragraph size, G document size.

The three levels share one q/k/v projection (B, T, d); a level views it with its own head count:
  L1 short:      every query sees the last `window` tokens (itself included);
  L2 paragraph:  a null key, the mean-pooled summaries of the last `span` complete paragraphs
                 before the query's paragraph, and the tokens of the routed paragraphs;
  L3 document:   a null key and the summaries of every complete document group before the
                 query's group.
The null key (k = 0, v = 0) lets a query that has nothing to see at a level attend to nothing: its
output there is 0, with no NaN from an empty softmax.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- shared pieces


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, d) -> (B, H, T, d // H)"""
    B, T, d = x.shape
    return x.view(B, T, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, hd) -> (B, T, H * hd)"""
    B, H, T, hd = x.shape
    return x.transpose(1, 2).reshape(B, T, H * hd)


def pool_groups(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over complete groups of `size` tokens: (B, T, d) -> (B, T // size, d)."""
    B, T, d = x.shape
    n = T // size
    return x[:, : n * size].view(B, n, size, d).mean(dim=2)


def rotary(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding of x (B, H, T, hd) at float positions pos (T,).

    Summaries sit at the centre of their group (a fractional position), so positions are floats.
    """
    hd = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
    ang = pos.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, hd/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def summary_positions(n: int, size: int, device) -> torch.Tensor:
    """Position of each group summary: the centre of its tokens."""
    return torch.arange(n, device=device, dtype=torch.float32) * size + (size - 1) / 2


def route_paragraphs(
    q: torch.Tensor, k: torch.Tensor, *, n_heads: int, paragraph_size: int, top_k: int,
    first_block: int, n_blocks: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entropy-based routing: which earlier paragraphs each query paragraph reads token by token.

    q, k: (B, T, d) unrotated history. Routing is decided per query paragraph b for b in
    [first_block, first_block + n_blocks). For b the candidate paths are the complete paragraphs
    j <= b - 1 and the router is the mean query of paragraph b - 1 (entirely in the past of every
    query of b, so routing is causal):
        p_j = softmax_j(qbar_{b-1} . kbar_j / sqrt(hd))           (per head)
        H   = -sum_j p_j log p_j
        k_b = clamp(ceil(exp(H)), 1, top_k)  (the entropy's effective number of paths)
    and the k_b most probable paragraphs are routed to. All of it is a few batched matmuls over
    paragraph summaries: (T / g)^2 * hd multiply-adds per head, no loop over tokens or groups.

    Returns idx (B, H, n_blocks, K) paragraph indices sorted by p (K = min(top_k, T // g)),
    valid (B, H, n_blocks, K) bool (slot used), entropy (B, H, n_blocks) (0 where no candidate).
    """
    B, T, d = q.shape
    g = paragraph_size
    nb = T // g
    K = min(top_k, nb)
    blocks = torch.arange(first_block, first_block + n_blocks, device=q.device)
    if K == 0:
        empty = torch.zeros(B, n_heads, n_blocks, 0, device=q.device, dtype=torch.long)
        return empty, empty.bool(), torch.zeros(B, n_heads, n_blocks, device=q.device)
    qbar = split_heads(pool_groups(q, g), n_heads)  # (B, H, nb, hd)
    kbar = split_heads(pool_groups(k, g), n_heads)
    rows = (blocks - 1).clamp(0, nb - 1)
    scores = (qbar[:, :, rows].float() @ kbar.float().transpose(-1, -2)) / math.sqrt(d // n_heads)
    cand = (torch.arange(nb, device=q.device)[None, :] <= blocks[:, None] - 1)  # (n_blocks, nb)
    scores = scores.masked_fill(~cand, float("-inf"))
    has = cand.any(-1)  # query blocks with at least one candidate
    p = torch.where(has[:, None], torch.softmax(scores.masked_fill(~has[:, None], 0.0), -1), 0.0)
    entropy = -torch.special.xlogy(p, p).sum(-1)  # (B, H, n_blocks)
    n_paths = torch.ceil(torch.exp(entropy)).clamp(1, K)
    n_paths = torch.minimum(n_paths, cand.sum(-1).to(n_paths.dtype))  # never more than exist
    top = p.topk(K, dim=-1).indices  # (B, H, n_blocks, K), most probable first
    valid = torch.arange(K, device=q.device) < n_paths[..., None]
    return top, valid, entropy


# ----------------------------------------------------------------------------- eager reference


def _masked_attention(q, keys, values, mask, scale):
    """softmax(q k^T * scale + mask) v, softmax in fp32. mask broadcastable to (B, H, Tq, Tk)."""
    scores = (q.float() @ keys.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return (torch.softmax(scores, -1) @ values.float()).to(q.dtype)


def _null(x: torch.Tensor) -> torch.Tensor:
    """A zero key/value slot shaped like one position of x (B, H, 1, hd)."""
    return x.new_zeros(x.shape[0], x.shape[1], 1, x.shape[3])


def hierarchical_attention_eager(
    q_new: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_hist: torch.Tensor, q_pos: torch.Tensor, *,
    level_heads, window: int, paragraph_size: int, document_size: int, top_k: int, rope_theta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference hierarchical attention with dense masks (O(Tq * T) memory; for tests and decoding).

    q_new (B, Tq, d) queries at absolute positions q_pos (Tq,); k, v, q_hist (B, T, d) the whole
    history, q_pos[-1] < T. Returns the three level outputs, each (B, Tq, d), before gating.
    """
    B, T, d = k.shape
    g, G = paragraph_size, document_size
    kpos = torch.arange(T, device=k.device)
    qp = q_pos[:, None]
    outs = []

    # L1: causal sliding window over tokens.
    H = level_heads[0]
    qh = rotary(split_heads(q_new, H), q_pos, rope_theta)
    kh = rotary(split_heads(k, H), kpos, rope_theta)
    mask = (kpos[None, :] <= qp) & (kpos[None, :] > qp - window)
    outs.append(merge_heads(_masked_attention(qh, kh, split_heads(v, H), mask, (d // H) ** -0.5)))

    # L2: null + last `span` paragraph summaries + routed paragraphs at token resolution.
    H = level_heads[1]
    span = G // g
    n_par = T // g
    qh = rotary(split_heads(q_new, H), q_pos, rope_theta)
    ks = rotary(split_heads(pool_groups(k, g), H), summary_positions(n_par, g, k.device), rope_theta)
    vs = split_heads(pool_groups(v, g), H)
    kt = rotary(split_heads(k, H), kpos, rope_theta)
    vt = split_heads(v, H)
    keys = torch.cat([_null(kt), ks, kt], dim=2)
    values = torch.cat([_null(vt), vs, vt], dim=2)
    qb = qp // g  # query paragraph (Tq, 1)
    j = torch.arange(n_par, device=k.device)[None, :]
    m_sum = (j < qb) & (j >= qb - span)  # (Tq, n_par)
    b0 = int(q_pos[0]) // g
    n_qb = int(q_pos[-1]) // g - b0 + 1
    idx, valid, _ = route_paragraphs(q_hist, k, n_heads=H, paragraph_size=g, top_k=top_k,
                                     first_block=b0, n_blocks=n_qb)
    routed = torch.zeros(B, H, n_qb, n_par + 1, dtype=torch.bool, device=k.device)
    routed.scatter_(-1, torch.where(valid, idx, n_par), True)  # unused slots land in a spare column
    routed = routed[..., :n_par]
    # token t is visible when its (complete) paragraph is routed for the query's paragraph
    if n_par:
        tok_par = (kpos // g).clamp(max=n_par - 1)
        m_tok = routed[:, :, (q_pos // g) - b0][..., tok_par] & (kpos < n_par * g)  # (B, H, Tq, T)
    else:
        m_tok = torch.zeros(B, H, len(q_pos), T, dtype=torch.bool, device=k.device)
    mask = torch.cat([
        torch.ones(B, H, len(q_pos), 1, dtype=torch.bool, device=k.device),
        m_sum.expand(B, H, -1, -1), m_tok], dim=-1)
    outs.append(merge_heads(_masked_attention(qh, keys, values, mask, (d // H) ** -0.5)))

    # L3: null + summaries of every complete document group before the query's group.
    H = level_heads[2]
    n_doc = T // G
    qh = rotary(split_heads(q_new, H), q_pos, rope_theta)
    ks = rotary(split_heads(pool_groups(k, G), H), summary_positions(n_doc, G, k.device), rope_theta)
    vs = split_heads(pool_groups(v, G), H)
    keys = torch.cat([_null(ks), ks], dim=2)
    values = torch.cat([_null(vs), vs], dim=2)
    jd = torch.arange(n_doc, device=k.device)[None, :]
    mask = torch.cat([torch.ones(len(q_pos), 1, dtype=torch.bool, device=k.device), jd < qp // G], dim=-1)
    outs.append(merge_heads(_masked_attention(qh, keys, values, mask, (d // H) ** -0.5)))
    return outs[0], outs[1], outs[2]


# ----------------------------------------------------------------------------- FlexAttention fast path


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, block_mask, scale):
    from torch.nn.attention.flex_attention import flex_attention

    if not q.is_cuda:
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)
    options = None
    block = block_mask.BLOCK_SIZE[0]
    if block < 128:  # the kernel's default tiles (128) must divide the mask's blocks
        options = {name: block for name in ("BLOCK_M", "BLOCK_N", "BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2")}
    return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale, kernel_options=options)


def _as_indices(need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (..., n_q_blocks, n_kv_blocks) bool table -> flex's (counts, indices with used ones first)."""
    num = need.sum(-1).to(torch.int32)
    idx = torch.argsort((~need).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num, idx


@functools.lru_cache(maxsize=32)
def _window_block_mask(T: int, window: int, block: int, device: str):
    """L1 mask, built once per (length, window, block, device) straight from block tables (no
    T x T evaluation): q - window < kv <= q. Blocks wholly inside the window are "full" (no
    element-wise mask in the kernel); the diagonal and the window's far edge are partial."""
    from torch.nn.attention.flex_attention import BlockMask

    n = T // block
    qb = torch.arange(n, device=device)[:, None]
    kb = torch.arange(n, device=device)[None, :]
    q_lo, q_hi = qb * block, qb * block + block - 1
    k_lo, k_hi = kb * block, kb * block + block - 1
    any_ = (k_lo <= q_hi) & (k_hi > q_lo - window)  # some pair (q, kv) of the blocks is visible
    all_ = (k_hi <= q_lo) & (k_lo > q_hi - window)  # every pair is visible
    num, idx = _as_indices(any_ & ~all_)
    full_num, full_idx = _as_indices(all_)

    def mask_mod(b, h, q, kv):
        return (kv <= q) & (kv > q - window)

    return BlockMask.from_kv_blocks(num[None, None], idx[None, None], full_num[None, None], full_idx[None, None],
                                    BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(T, T))


def _pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad (B, T, d) to length n on the right (future positions: invisible to real queries)."""
    return x if x.shape[1] == n else F.pad(x, (0, 0, 0, n - x.shape[1]))


def paragraph_block_mask(idx: torch.Tensor, valid: torch.Tensor, *, n_par: int, length: int, paragraph_size: int,
                         span: int):
    """L2 block mask over keys laid out as [null, n_par summaries, pad to a block | `length` tokens].

    Query paragraph b reads (partial blocks, masked element-wise) the summary blocks that hold the
    null key and summaries b - span .. b - 1 (kv index 1 + j), and (full blocks) the token blocks
    of its routed paragraphs idx[..., b, :valid]. Flex blocks are one paragraph long.
    """
    from torch.nn.attention.flex_attention import BlockMask

    g = paragraph_size
    B, H, n_qb, _ = idx.shape
    dev = idx.device
    S = -(-(1 + n_par) // g) * g  # summary region, padded to whole blocks
    n_sb = S // g
    qb = torch.arange(n_qb, device=dev)
    lo = (1 + (qb - span).clamp(min=0)) // g
    hi = qb // g  # kv index of summary b - 1 is b
    sb = torch.arange(n_sb, device=dev)
    n_kv = n_sb + length // g
    # Block tables span every kv block (flex expects index rows as wide as the kv block count).
    need = torch.zeros(n_qb, n_kv, dtype=torch.bool, device=dev)
    need[:, :n_sb] = (sb[None] == 0) | ((sb[None] >= lo[:, None]) & (sb[None] <= hi[:, None]))
    kv_num, kv_idx = _as_indices(need)
    if idx.shape[-1] == 0:  # nothing routable (short sequence or top_k = 0)
        idx = torch.zeros(B, H, n_qb, 1, dtype=torch.long, device=dev)
        valid = torch.zeros_like(idx, dtype=torch.bool)
    # routed paragraph j is token block n_sb + j; unused slots land in a spare last column
    full = torch.zeros(B, H, n_qb, n_kv + 1, dtype=torch.bool, device=dev)
    full.scatter_(-1, torch.where(valid, idx + n_sb, n_kv), True)
    full_num, full_idx = _as_indices(full[..., :n_kv])
    # The same rule element-wise: flex's unfused (CPU, eager) path applies only mask_mod, and the
    # fused kernel applies it to partial blocks; full (routed) blocks skip it.
    routed = full[..., n_sb:n_kv].contiguous()  # (B, H, n_qb, n_qb): paragraph j routed for query paragraph b

    def mask_mod(b, h, q_idx, kv_idx_):
        j = kv_idx_ - 1
        qpar = q_idx // g
        summary = (kv_idx_ == 0) | ((kv_idx_ < S) & (j < n_par) & (j < qpar) & (j >= qpar - span))
        tok_par = ((kv_idx_ - S) // g).clamp(0, n_qb - 1)
        token = (kv_idx_ >= S) & routed[b, h, qpar, tok_par]
        return summary | token

    return BlockMask.from_kv_blocks(
        kv_num[None, None].expand(B, H, -1).contiguous(), kv_idx[None, None].expand(B, H, -1, -1).contiguous(),
        full_num, full_idx, BLOCK_SIZE=g, mask_mod=mask_mod, seq_lengths=(length, S + length))


def _compiled_on_cuda(fn):
    """fn, but through torch.compile when its first argument is on a GPU: the glue around the
    attention kernels (rotary, pooling, key concatenation) is memory-bound, and left eager it costs
    several times the kernels themselves (measured: benchmarks/results/attention.md)."""
    compiled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal compiled
        if not args[0].is_cuda:
            return fn(*args, **kwargs)
        if compiled is None:
            compiled = torch.compile(fn, dynamic=False)
        return compiled(*args, **kwargs)

    return wrapper


@_compiled_on_cuda
def _level1_inputs(q, k, v, n_heads: int, rope_theta: float):
    pos = torch.arange(q.shape[1], device=q.device)
    return (rotary(split_heads(q, n_heads), pos, rope_theta), rotary(split_heads(k, n_heads), pos, rope_theta),
            split_heads(v, n_heads))


@_compiled_on_cuda
def _level2_inputs(q, k, v, n_heads: int, paragraph_size: int, n_par: int, summary_len: int, rope_theta: float):
    """Queries, and keys/values laid out as [null, summaries, pad | tokens] (see paragraph_block_mask).
    q, k, v are padded to whole paragraphs; summaries come from the n_par complete ones."""
    B, Tp, _ = q.shape
    g = paragraph_size
    pos = torch.arange(Tp, device=q.device)
    ks = rotary(split_heads(pool_groups(k[:, : n_par * g], g), n_heads), summary_positions(n_par, g, q.device),
                rope_theta)
    vs = split_heads(pool_groups(v[:, : n_par * g], g), n_heads)
    kt = rotary(split_heads(k, n_heads), pos, rope_theta)
    vt = split_heads(v, n_heads)
    pad = summary_len - 1 - n_par
    keys = torch.cat([_null(kt), ks, kt.new_zeros(B, n_heads, pad, kt.shape[-1]), kt], dim=2)
    values = torch.cat([_null(vt), vs, vt.new_zeros(B, n_heads, pad, vt.shape[-1]), vt], dim=2)
    return rotary(split_heads(q, n_heads), pos, rope_theta), keys, values


@_compiled_on_cuda
def _level3(q, k, v, n_heads: int, document_size: int, rope_theta: float):
    """Document level: few keys (T / G), so SDPA with a dense (T, 1 + T/G) mask is cheap."""
    B, T, d = q.shape
    G = document_size
    n_doc = T // G
    ks = rotary(split_heads(pool_groups(k, G), n_heads), summary_positions(n_doc, G, q.device), rope_theta)
    vs = split_heads(pool_groups(v, G), n_heads)
    keys = torch.cat([_null(ks), ks], dim=2)
    values = torch.cat([_null(vs), vs], dim=2)
    tpos = torch.arange(T, device=q.device)
    jd = torch.arange(n_doc, device=q.device)
    mask = torch.cat([torch.ones(T, 1, dtype=torch.bool, device=q.device), jd[None] < (tpos // G)[:, None]], -1)
    o = F.scaled_dot_product_attention(rotary(split_heads(q, n_heads), tpos, rope_theta), keys, values,
                                       attn_mask=mask, scale=(d // n_heads) ** -0.5)
    return merge_heads(o)


def hierarchical_attention_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    level_heads, window: int, paragraph_size: int, document_size: int, top_k: int, rope_theta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast path for a whole causal sequence (training / prefill): same result as the eager
    reference with q_pos = arange(T), computed with FlexAttention block-sparse kernels.

    L2's keys are laid out as [null, summaries, pad | tokens]; the block mask gives each query
    paragraph the summary blocks it needs (partial blocks, masked element-wise) and its routed
    paragraphs as full blocks, so unrouted paragraphs cost nothing. Flex blocks are one paragraph.
    """
    B, T, d = q.shape
    g = paragraph_size
    Tp = -(-T // g) * g  # padded to whole paragraphs
    qp, kp, vp = _pad_to(q, Tp), _pad_to(k, Tp), _pad_to(v, Tp)

    H = level_heads[0]
    o1 = _flex(*_level1_inputs(qp, kp, vp, H, rope_theta), _window_block_mask(Tp, window, g, str(q.device)),
               (d // H) ** -0.5)

    H = level_heads[1]
    n_par = T // g
    S = -(-(1 + n_par) // g) * g  # summary region, padded to whole blocks (as in paragraph_block_mask)
    idx, valid, _ = route_paragraphs(q, k, n_heads=H, paragraph_size=g, top_k=top_k, first_block=0,
                                     n_blocks=Tp // g)
    block_mask = paragraph_block_mask(idx, valid, n_par=n_par, length=Tp, paragraph_size=g,
                                      span=document_size // g)
    o2 = _flex(*_level2_inputs(qp, kp, vp, H, g, n_par, S, rope_theta), block_mask, (d // H) ** -0.5)

    h3 = _level3(q, k, v, level_heads[2], document_size, rope_theta)
    return merge_heads(o1)[:, :T], merge_heads(o2)[:, :T], h3
