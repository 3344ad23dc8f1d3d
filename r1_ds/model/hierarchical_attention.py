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
import os

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- shared pieces


def raise_recompile_limit(limit: int = 128) -> None:
    """The static attention glue compiles once per bucketed length (flex_length: at most 64 from 1k to
    128k tokens, a few more per batch size or dtype); past dynamo's default limit (8) it would silently
    fall back to eager, and flex to its unfused O(T^2) path. Raise the limit, never lower it."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    if getattr(cfg, name) < limit:
        setattr(cfg, name, limit)


def _recompile_limit() -> int:
    cfg = torch._dynamo.config
    return getattr(cfg, "recompile_limit", None) or cfg.cache_size_limit


_static_shapes: dict[str, set] = {}


def _check_static_shapes(name: str, args) -> None:
    """Refuse, with the reason, the call that would push a static-shape compiled function past dynamo's
    recompile limit: dynamo would run it eager instead, and FlexAttention eager on a GPU is its unfused
    O(T^2) path (minutes per step, or out of memory, at long lengths). A function sees one signature
    (shapes, dtypes, grad mode) per bucketed length, batch size and dtype, so only a process that mixes
    many of those gets here."""
    key = tuple((tuple(a.shape), a.dtype, a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args)
    # dynamo's guards include the dispatch state, which differs inside an op's implementation (paragraph_attention_
    # apart): the same shapes compile again there
    key += (repr(torch._C._dispatch_tls_local_exclude_set()),)
    seen = _static_shapes.setdefault(name, set())
    if key in seen:
        return
    limit = _recompile_limit() - 8  # dynamo counts other guard failures too (grad mode, first-call variants)
    if len(seen) >= limit:
        raise RuntimeError(
            f"r1_ds: {name} is already compiled for {len(seen)} different input shapes in this process, and one "
            f"more would exceed torch.compile's recompile limit ({limit + 8}), after which it would silently run "
            f"uncompiled (FlexAttention's O(T^2) fallback). Sequence lengths are bucketed (flex_length), so this "
            f"comes from many batch sizes or dtypes: keep them fixed, or raise "
            f"torch._dynamo.config.recompile_limit."
        )
    seen.add(key)


def flex_length(T: int, paragraph_size: int) -> int:
    """The length the fast path computes a T-token sequence at: T rounded up to a multiple of the paragraph
    and to one of 8 steps per octave (1024, 1152, ..., 1920, 2048, 2304, ...), at most 1/8 more work. Each
    length compiles its own kernels, so rounding bounds their number (64 from 1k to 128k tokens) whatever
    lengths a run meets (progressive stages, evaluation, prompts of any length). The padded tail changes
    nothing before it: every level is causal at group resolution (see hierarchical_attention_flex)."""
    g = paragraph_size
    step = max(g, 1 << max(0, T.bit_length() - 4))  # 2^(floor(log2 T) - 3): 8 steps per octave
    step = -(-step // g) * g
    return -(-T // step) * step


def compiled_on_cuda(fn=None, *, dynamic: bool | None = False):
    """fn, but through torch.compile when its first argument is on a GPU; on CPU, fn itself. The
    memory-bound glue around the matmuls and attention kernels (rotary, pooling, key layout, norms,
    gates) left eager costs several times the kernels themselves (benchmarks/results/attention.md).
    dynamic=None lets shapes vary without a recompile each (element-wise pieces that see every
    length in generation); the attention glue stays static (its shapes set the kernels' tiles), and a
    call that would exceed the recompile limit is refused (_check_static_shapes)."""
    if fn is None:
        return functools.partial(compiled_on_cuda, dynamic=dynamic)
    compiled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal compiled
        if not args[0].is_cuda or torch.compiler.is_compiling():  # inside a compiled block: traced into it
            return fn(*args, **kwargs)
        if compiled is None:
            raise_recompile_limit()
            compiled = torch.compile(fn, dynamic=dynamic)
        if dynamic is False:
            _check_static_shapes(fn.__qualname__, (*args, *kwargs.values(), torch.is_grad_enabled()))
        return compiled(*args, **kwargs)

    return wrapper


def _cached(fn, *args):
    """fn(*args) through fn's lru_cache; traced afresh inside a compiled region, where dynamo ignores the
    cache wrapper anyway (and warns) and inductor folds the constant tables into the graph."""
    return fn.__wrapped__(*args) if torch.compiler.is_compiling() else fn(*args)


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


def rope_size(d: int, level_heads) -> int:
    """Channels per rotary chunk: the largest size that tiles every level's heads (their gcd)."""
    return math.gcd(*(d // h for h in level_heads))


def rope_table(pos: torch.Tensor, size: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, size / 2) fp32 of float positions pos (T,). Summaries sit at the centre of their
    group (a fractional position), so positions are floats. Computed once per call, outside the
    compiled glue, so a kernel reads the table instead of evaluating sin/cos per element."""
    inv_freq = theta ** (-torch.arange(0, size, 2, device=pos.device, dtype=torch.float32) / size)
    ang = pos.to(torch.float32)[:, None] * inv_freq[None, :]
    return ang.cos(), ang.sin()


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (B, T, d), applied to every chunk of r = 2 * cos.shape[-1]
    channels (pairs (i, i + r/2) of a chunk rotate by pos * theta^(-2i/r)), in fp32 (or fp64).

    One pass serves every level: r divides each level's head size, so a head of any level is a row
    of whole chunks, and q.k within a head depends only on the relative position, which is all
    rotary promises. (Per-head frequencies would need one rotary pass per level.)
    """
    B, T, d = x.shape
    half = cos.shape[-1]
    xc = x.to(torch.promote_types(x.dtype, torch.float32)).view(B, T, d // (2 * half), 2 * half)
    x1, x2 = xc[..., :half], xc[..., half:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).view(B, T, d).to(x.dtype)


def summary_len(n_par: int, paragraph_size: int) -> int:
    """Length of L2's summary region in the flex path: blocks of one paragraph, each [null, the next
    paragraph_size - 1 summaries] (the last padded), at least one block (for the null key)."""
    per = paragraph_size - 1
    return max(1, -(-n_par // per)) * paragraph_size


def summary_positions(n: int, size: int, device) -> torch.Tensor:
    """Position of each group summary: the centre of its tokens."""
    return torch.arange(n, device=device, dtype=torch.float32) * size + (size - 1) / 2


def route_paragraphs(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    n_heads: int,
    paragraph_size: int,
    top_k: int,
    first_block: int,
    n_blocks: int,
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
    g = paragraph_size
    return route_pooled(
        pool_groups(q, g), pool_groups(k, g), n_heads=n_heads, top_k=top_k, first_block=first_block, n_blocks=n_blocks
    )


def route_pooled(
    qbar: torch.Tensor, kbar: torch.Tensor, *, n_heads: int, top_k: int, first_block: int, n_blocks: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """route_paragraphs from the paragraph means qbar, kbar (B, nb, d) of the complete paragraphs
    (decoding keeps them from step to step: group_summaries.py)."""
    B, nb, d = qbar.shape
    K = min(top_k, nb)
    blocks = torch.arange(first_block, first_block + n_blocks, device=qbar.device)
    if K == 0:
        empty = torch.zeros(B, n_heads, n_blocks, 0, device=qbar.device, dtype=torch.long)
        return empty, empty.bool(), torch.zeros(B, n_heads, n_blocks, device=qbar.device)
    qbar = split_heads(qbar, n_heads)  # (B, H, nb, hd)
    kbar = split_heads(kbar, n_heads)
    rows = (blocks - 1).clamp(0, nb - 1)
    scores = (qbar[:, :, rows].float() @ kbar.float().transpose(-1, -2)) / math.sqrt(d // n_heads)
    cand = torch.arange(nb, device=qbar.device)[None, :] <= blocks[:, None] - 1  # (n_blocks, nb)
    return entropy_paths(scores, cand, K)


def entropy_paths(scores: torch.Tensor, cand: torch.Tensor, K: int):
    """The entropy rule, per row: scores (B, H, R, N) fp32 of N paths, cand (R, N) which are candidates;
    p = softmax over the candidates, H = -sum p log p, and the k = clamp(ceil(exp(H)), 1, K) most probable
    (never more than there are candidates) are taken. Returns top (B, H, R, K) path indices, most probable
    first; valid (B, H, R, K) slot used; entropy (B, H, R) (0 for a row without candidates)."""
    scores = scores.masked_fill(~cand, float("-inf"))
    has = cand.any(-1)[:, None]  # rows with at least one candidate
    p = torch.where(has, torch.softmax(scores.masked_fill(~has, 0.0), -1), 0.0)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    # Never more paths than have p > 0 (candidates only: the rest have p = 0). Where the softmax underflows,
    # the paths past the m with p > 0 tie at p = 0 with the non-candidates (later paragraphs), and exp(H) of m
    # equal paths rounds above m in fp32 (6.0000014 for m = 6): the slot past them would read the future.
    n_paths = torch.minimum(torch.ceil(torch.exp(entropy)).clamp(1, K), (p > 0).sum(-1).to(entropy.dtype))
    top = p.topk(K, dim=-1).indices
    valid = torch.arange(K, device=scores.device) < n_paths[..., None]
    return top, valid, entropy


def route_tokens(
    q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, *, n_heads: int, paragraph_size: int, top_k: int
) -> torch.Tensor:
    """Per-token routing (R1Config.l2_routing="token", the eager reference's research option).

    q (B, Tq, d) unrotated queries at positions q_pos (Tq,), k (B, T, d) unrotated history. Every query
    token t scores the complete paragraphs before its own, j < t // g, by its own query against their mean
    keys, p_j = softmax_j(q_t . kbar_j / sqrt(hd)), and reads the k_t = clamp(ceil(exp(H(p))), 1, top_k)
    most probable (route_pooled's entropy rule, per token instead of per query paragraph). Causal: t's
    choice uses only q_t and paragraphs that end before t's paragraph starts. Returns (B, H, Tq, T // g) bool.
    """
    g = paragraph_size
    B, T, d = k.shape
    n_par = T // g
    K = min(top_k, n_par)
    if K == 0:
        return torch.zeros(B, n_heads, q.shape[1], n_par, dtype=torch.bool, device=k.device)
    qh = split_heads(q, n_heads).float()  # (B, H, Tq, hd)
    kbar = split_heads(pool_groups(k, g), n_heads).float()  # (B, H, n_par, hd)
    scores = qh @ kbar.transpose(-1, -2) / math.sqrt(d // n_heads)  # (B, H, Tq, n_par)
    cand = torch.arange(n_par, device=k.device)[None, :] < (q_pos // g)[:, None]  # (Tq, n_par)
    return route_from_scores(scores, cand, K)


def route_from_scores(scores: torch.Tensor, cand: torch.Tensor, top_k: int) -> torch.Tensor:
    """The entropy rule per query row: scores (B, H, Tq, n_par) of the paragraphs, cand (Tq, n_par) which
    are candidates; p = softmax over the candidates, k = clamp(ceil(exp(H(p))), 1, top_k) most probable
    routed. Returns (B, H, Tq, n_par) bool (R1Config.l2_routing "token" and "summary")."""
    B, H, Tq, n_par = scores.shape
    K = min(top_k, n_par)
    if K == 0:
        return torch.zeros(B, H, Tq, n_par, dtype=torch.bool, device=scores.device)
    top, valid, _ = entropy_paths(scores.float(), cand, K)
    routed = torch.zeros(B, H, Tq, n_par + 1, dtype=torch.bool, device=scores.device)
    routed.scatter_(-1, torch.where(valid, top, n_par), True)  # unused slots land in a spare column
    return routed[..., :n_par] & cand


# ----------------------------------------------------------------------------- eager reference


def _attend(q, keys, values, mask, scale):
    """softmax(q k^T * scale, masked) v: the scores leave the GEMM in the operands' dtype, the softmax runs
    in fp32, its weights go back to the operands' dtype. mask broadcastable to (..., Tq, Tk)."""
    scores = (q @ keys.transpose(-1, -2)).float() * scale
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(q.dtype) @ values


def _masked_attention(q, keys, values, mask, scale):
    """The reference's attention: _attend wholly in fp32, whatever the operands' dtype."""
    return _attend(q.float(), keys.float(), values.float(), mask, scale).to(q.dtype)


def _null(x: torch.Tensor) -> torch.Tensor:
    """A zero key/value slot shaped like one position of x (B, H, 1, hd)."""
    return x.new_zeros(x.shape[0], x.shape[1], 1, x.shape[3])


def hierarchical_attention_eager(
    q_new: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_hist: torch.Tensor,
    q_pos: torch.Tensor | range,
    *,
    level_heads,
    window: int,
    paragraph_size: int,
    document_size: int,
    top_k: int,
    rope_theta: float,
    l2_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    l2_routing: str = "paragraph",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference hierarchical attention with dense masks (O(Tq * T) memory; for tests and decoding).

    q_new (B, Tq, d) queries at the consecutive absolute positions q_pos (Tq,); k, v, q_hist (B, T, d)
    the whole history, q_pos[-1] < T. Returns the three level outputs, each (B, Tq, d), before gating.
    q_pos as a range keeps its ends Python ints: no tensor-to-int sync (and no graph break when compiled).
    The L2 research options (R1Config.l2_projections / l2_routing; only this function computes them):
    l2_qkv = (q_new, k, v, q_hist) of L2's own projections; l2_routing="token" routes every query token
    by its own query (route_tokens) instead of every query paragraph by the paragraph before it;
    l2_routing="summary" gives every query the summaries of all earlier complete paragraphs as keys and routes
    it by its own (rotated, trained) scores over them (route_from_scores).
    """
    if isinstance(q_pos, range):
        first, last = q_pos.start, q_pos.stop - 1
        q_pos = torch.arange(q_pos.start, q_pos.stop, device=k.device)
    else:
        first, last = int(q_pos[0]), int(q_pos[-1])
    B, T, d = k.shape
    g, G = paragraph_size, document_size
    r = rope_size(d, level_heads)
    kpos = torch.arange(T, device=k.device)
    qp = q_pos[:, None]
    # One rotary for every level: queries and token keys at their positions, summaries (below) at
    # the centre of their group; the tables are shared by every layer (cached).
    cos, sin = rope_grid(T, 1, r, rope_theta, k.device)
    qr = rotary(q_new, cos[q_pos], sin[q_pos])
    kr = rotary(k, cos, sin)
    outs = []

    # L1: causal sliding window over tokens.
    H = level_heads[0]
    mask = (kpos[None, :] <= qp) & (kpos[None, :] > qp - window)
    outs.append(
        merge_heads(
            _masked_attention(split_heads(qr, H), split_heads(kr, H), split_heads(v, H), mask, (d // H) ** -0.5)
        )
    )

    # L2: null + last `span` paragraph summaries + routed paragraphs at token resolution.
    H = level_heads[1]
    span = G // g
    n_par = T // g
    q2r, k2, v2, k2r, q2_hist = qr, k, v, kr, q_hist
    if l2_qkv is not None:  # L2's own projections (R1Config.l2_projections="separate")
        q2_new, k2, v2, q2_hist = l2_qkv
        q2r, k2r = rotary(q2_new, cos[q_pos], sin[q_pos]), rotary(k2, cos, sin)
    ks = split_heads(rotary(pool_groups(k2, g), *rope_grid(n_par, g, r, rope_theta, k.device)), H)
    vs = split_heads(pool_groups(v2, g), H)
    kt, vt = split_heads(k2r, H), split_heads(v2, H)
    keys = torch.cat([_null(kt), ks, kt], dim=2)
    values = torch.cat([_null(vt), vs, vt], dim=2)
    qb = qp // g  # query paragraph (Tq, 1)
    j = torch.arange(n_par, device=k.device)[None, :]
    m_sum = (j < qb) & (j >= qb - span)  # (Tq, n_par)
    b0 = first // g
    n_qb = last // g - b0 + 1
    if l2_routing == "summary":  # every earlier summary is a key, and its trained scores route
        m_sum = j < qb
        scores = (split_heads(q2r, H) @ ks.transpose(-1, -2)).float() * (d // H) ** -0.5  # (B, H, Tq, n_par)
        routed = route_from_scores(scores.detach(), m_sum, top_k)
    elif l2_routing == "token":
        routed = route_tokens(
            q2_hist[:, q_pos].detach(), k2.detach(), q_pos, n_heads=H, paragraph_size=g, top_k=top_k
        )  # (B, H, Tq, n_par); no gradient
    else:
        idx, valid, _ = route_paragraphs(
            q2_hist.detach(), k2.detach(), n_heads=H, paragraph_size=g, top_k=top_k, first_block=b0, n_blocks=n_qb
        )  # routing carries no gradient
        routed = torch.zeros(B, H, n_qb, n_par + 1, dtype=torch.bool, device=k.device)
        routed.scatter_(-1, torch.where(valid, idx, n_par), True)  # unused slots land in a spare column
        routed = routed[:, :, (q_pos // g) - b0, :n_par]  # (B, H, Tq, n_par): each query its paragraph's
    # token t is visible when its (complete) paragraph is routed for the query
    if n_par:
        tok_par = (kpos // g).clamp(max=n_par - 1)
        m_tok = routed[..., tok_par] & (kpos < n_par * g)  # (B, H, Tq, T)
    else:
        m_tok = torch.zeros(B, H, len(q_pos), T, dtype=torch.bool, device=k.device)
    mask = torch.cat(
        [torch.ones(B, H, len(q_pos), 1, dtype=torch.bool, device=k.device), m_sum.expand(B, H, -1, -1), m_tok], dim=-1
    )
    outs.append(merge_heads(_masked_attention(split_heads(q2r, H), keys, values, mask, (d // H) ** -0.5)))

    # L3: null + summaries of every complete document group before the query's group.
    H = level_heads[2]
    n_doc = T // G
    ks = split_heads(rotary(pool_groups(k, G), *rope_grid(n_doc, G, r, rope_theta, k.device)), H)
    vs = split_heads(pool_groups(v, G), H)
    keys = torch.cat([_null(ks), ks], dim=2)
    values = torch.cat([_null(vs), vs], dim=2)
    jd = torch.arange(n_doc, device=k.device)[None, :]
    mask = torch.cat([torch.ones(len(q_pos), 1, dtype=torch.bool, device=k.device), jd < qp // G], dim=-1)
    outs.append(merge_heads(_masked_attention(split_heads(qr, H), keys, values, mask, (d // H) ** -0.5)))
    return outs[0], outs[1], outs[2]


def _rotary_at(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """rotary() of x (..., N, hd) with per-row tables cos, sin (..., N, r / 2): the same arithmetic, for keys
    gathered from scattered positions (hd a multiple of the rotary size r, as every level's head is)."""
    half = cos.shape[-1]
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    xc = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (x.shape[-1] // (2 * half), 2 * half))
    x1, x2 = xc[..., :half], xc[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2).to(x.dtype)


def _gather_paragraphs(x: torch.Tensor, idx: torch.Tensor, n_heads: int, g: int, n_par: int) -> torch.Tensor:
    """The tokens of paragraphs idx (B, H, n, K) of x (B, T, d), per head: (B, H, n * K * g, d // H), paragraph
    by paragraph in idx's order. One indexing copy of whole head rows (no per-element index tensor)."""
    B, _, d = x.shape
    xp = x[:, : n_par * g].view(B, n_par, g, n_heads, d // n_heads)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    h = torch.arange(n_heads, device=x.device)[None, :, None, None]
    return xp[b, idx, :, h].flatten(2, 4)  # advanced indices first: (B, H, n, K, g, hd)


def _grid_length(n: int) -> int:
    """The rope table length a decoding step asks for n positions: n rounded up to a power of two (at least
    256), so that the cached tables serve every step until the history doubles (a table's row i does not depend
    on its length). Traced exactly while compiling, where the table is built in the graph anyway."""
    if torch.compiler.is_compiling():
        return n
    return max(256, 1 << max(0, n - 1).bit_length())


def rotate_keys(k: torch.Tensor, start: int, *, level_heads, rope_theta: float) -> torch.Tensor:
    """rotary() of keys k (B, n, d) at positions start .. start + n - 1, from the cached grid that decoding reads
    (the same arithmetic and tables as hierarchical_attention_decode's own rotation)."""
    end = start + k.shape[1]
    cos, sin = rope_grid(_grid_length(end), 1, rope_size(k.shape[-1], level_heads), rope_theta, k.device)
    return rotary(k, cos[start:end], sin[start:end])


def pooled_summaries(q, k, v, *, paragraph_size: int, document_size: int):
    """(qbar, kbar, vbar, k3, v3): the means of the complete paragraphs of q, k, v (B, T, d) and of the complete
    document groups of k and v, each (B, n, d), unrotated: what a decoding step reads of the distant history."""
    g, G = paragraph_size, document_size
    return pool_groups(q, g), pool_groups(k, g), pool_groups(v, g), pool_groups(k, G), pool_groups(v, G)


def hierarchical_attention_decode(
    q_new: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_hist: torch.Tensor,
    *,
    level_heads,
    window: int,
    paragraph_size: int,
    document_size: int,
    top_k: int,
    rope_theta: float,
    summaries: tuple[torch.Tensor, ...] | None = None,
    k_rot: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoding: the newest Tq queries (positions T - Tq .. T - 1) of a T-token history, reading only the keys
    they can see. The same result as hierarchical_attention_eager(q_new, k, v, q_hist, range(T - Tq, T)), whose
    dense masks span all T keys at L1 and L2 (and rotate all of them) for every new token.

    L1 reads the last window + Tq - 1 tokens; L2 the null, the summaries of the `span` paragraphs before the
    queries' paragraphs and the tokens of their routed paragraphs (gathered: top_k paragraphs of g tokens per
    query paragraph); L3 the null and every document summary. So a step's attention reads about
    window + span + top_k * g + T / G keys a level, where dense attention reads T. `summaries`: the
    pooled_summaries of the history, which a caller decoding step after step keeps and extends
    (group_summaries.py); None pools them here, reading the whole history. `k_rot`: the rotated keys of the
    whole history (B, T, d), kept the same way (a token's rotation never changes); None rotates the keys this
    step reads. Rotary tables come from the cached grids (rope_grid), shared by every layer and step."""
    B, Tq, d = q_new.shape
    T = k.shape[1]
    first = T - Tq
    dev = k.device
    g, G = paragraph_size, document_size
    r = rope_size(d, level_heads)
    if summaries is None:
        summaries = pooled_summaries(q_hist, k, v, paragraph_size=g, document_size=G)
    qbar, kbar, vbar, k3, v3 = summaries
    cos, sin = rope_grid(_grid_length(T), 1, r, rope_theta, dev)  # rows: token positions
    q_pos = torch.arange(first, T, device=dev)
    qp = q_pos[:, None]
    qr = rotary(q_new, cos[first:T], sin[first:T])
    outs = []

    # L1: the last `window` tokens of each query.
    H = level_heads[0]
    lo = max(0, first - window + 1)
    kpos = torch.arange(lo, T, device=dev)
    kr = rotary(k[:, lo:], cos[lo:T], sin[lo:T]) if k_rot is None else k_rot[:, lo:]
    mask = (kpos[None, :] <= qp) & (kpos[None, :] > qp - window)
    outs.append(
        merge_heads(
            _masked_attention(split_heads(qr, H), split_heads(kr, H), split_heads(v[:, lo:], H), mask, (d // H) ** -0.5)
        )
    )

    # L2: null + summaries of paragraphs [b - span, b) + the tokens of b's routed paragraphs.
    H = level_heads[1]
    hd = d // H
    span = G // g
    n_par = T // g
    b0, b1 = first // g, (T - 1) // g  # the queries' paragraphs
    j_lo, j_hi = max(0, b0 - span), min(b1, n_par)  # summaries any of them reads
    js = torch.arange(j_lo, j_hi, device=dev)
    cos_p, sin_p = rope_grid(_grid_length(n_par), g, r, rope_theta, dev)
    ks = split_heads(rotary(kbar[:, j_lo:j_hi], cos_p[j_lo:j_hi], sin_p[j_lo:j_hi]), H)
    vs = split_heads(vbar[:, j_lo:j_hi], H)
    qb = qp // g
    m_sum = (js[None, :] < qb) & (js[None, :] >= qb - span)  # (Tq, n_s)
    n_qb = b1 - b0 + 1
    idx, valid, _ = route_pooled(
        qbar.detach(), kbar.detach(), n_heads=H, top_k=top_k, first_block=b0, n_blocks=n_qb
    )  # (B, H, n_qb, K); no gradient
    K = idx.shape[-1]
    # the tokens of the routed paragraphs, (B, H, n_qb * K * g, hd): whole paragraphs gathered per head
    vt = _gather_paragraphs(v, idx, H, g, n_par)
    if k_rot is None:
        kt = _rotary_at(
            _gather_paragraphs(k, idx, H, g, n_par),
            *(t[: n_par * g].view(n_par, g, t.shape[-1])[idx].flatten(2, 4) for t in (cos, sin)),
        )
    else:
        kt = _gather_paragraphs(k_rot, idx, H, g, n_par)
    # gathered token n belongs to query paragraph b0 + n // (K g) and slot (n // g) % K
    own = (torch.arange(n_qb * K * g, device=dev) // (K * g))[None, :] == (qb - b0)  # (Tq, n_qb K g)
    used = valid[..., None].expand(-1, -1, -1, -1, g).flatten(2)[:, :, None, :]  # (B, H, 1, n_qb K g)
    null = _null(kt)
    keys = torch.cat([null, ks, kt], dim=2)
    values = torch.cat([null, vs, vt], dim=2)
    mask = torch.cat(
        [torch.ones(B, H, Tq, 1, dtype=torch.bool, device=dev), m_sum.expand(B, H, -1, -1), own & used], dim=-1
    )
    outs.append(merge_heads(_masked_attention(split_heads(qr, H), keys, values, mask, hd**-0.5)))

    # L3: null + summaries of every complete document group before the query's group.
    H = level_heads[2]
    n_doc = T // G
    cos_d, sin_d = rope_grid(_grid_length(n_doc), G, r, rope_theta, dev)
    ks = split_heads(rotary(k3, cos_d[:n_doc], sin_d[:n_doc]), H)
    vs = split_heads(v3, H)
    keys = torch.cat([_null(ks), ks], dim=2)
    values = torch.cat([_null(vs), vs], dim=2)
    jd = torch.arange(n_doc, device=dev)[None, :]
    mask = torch.cat([torch.ones(Tq, 1, dtype=torch.bool, device=dev), jd < qp // G], dim=-1)
    outs.append(merge_heads(_masked_attention(split_heads(qr, H), keys, values, mask, (d // H) ** -0.5)))
    return outs[0], outs[1], outs[2]


# ----------------------------------------------------------------------------- FlexAttention fast path


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    raise_recompile_limit()
    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, block_mask, scale):
    from torch.nn.attention.flex_attention import flex_attention

    if not q.is_cuda:
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)
    options = None
    block = block_mask.BLOCK_SIZE[0]
    if block < 128:  # the kernel's default tiles (128) must divide the mask's blocks
        options = {name: block for name in ("BLOCK_M", "BLOCK_N", "BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2")}
    if torch.compiler.is_compiling():  # compiled block: traced into it
        fn = flex_attention
    else:
        fn = _compiled_flex()
        _check_static_shapes("flex_attention", (q, k, v, block, torch.is_grad_enabled()))
    return fn(q, k, v, block_mask=block_mask, scale=scale, kernel_options=options)


@torch.library.custom_op("r1_ds::place_columns", mutates_args=())
def place_columns(slot: torch.Tensor) -> torch.Tensor:
    """(..., n_rows, n_cols) int64 slots, each row a permutation of 0 .. n_cols - 1 -> (same shape) int32
    column indices: out[..., r, slot[..., r, j]] = j, row-major.

    An opaque op to the compiler on purpose: inductor's code generation failed on this scatter once the
    rows grew past a few hundred columns (32k tokens and longer at paragraphs of 128, torch 2.11, CUDA:
    "Error in codegen for ComputedBuffer ... Scatter ... list indices must be integers or slices, not
    NoneType"). As a custom op it is one aten scatter kernel, and the cumulative sums feeding it stay fused."""
    cols = torch.arange(slot.shape[-1], device=slot.device, dtype=torch.int32).expand(slot.shape)
    return torch.empty(slot.shape, dtype=torch.int32, device=slot.device).scatter_(-1, slot, cols)


@place_columns.register_fake
def _(slot):
    return torch.empty(slot.shape, dtype=torch.int32, device=slot.device)


def _as_indices(need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (..., n_rows, n_cols) bool table -> flex's (counts, column indices with the used ones first, each
    group in column order): what a stable argsort of ~need gives.

    Both come out row-major whatever the layout of `need`. The fused GPU kernels step through a row of
    indices one element at a time and ignore its stride, so a table with other strides is read as the
    wrong blocks, silently; the query-side tables are built from transposed views, and an argsort keeps
    its input's strides (tests/test_attention_kernels.py::test_block_tables_are_row_major).

    No sort either: inside a compiled graph on GPU, inductor lowers small sorts to its own Triton kernel,
    slow to compile (why FlexAttention's own table code forces its argsort back to eager, pytorch#182745).
    Each column's slot is its rank within its group, by two cumulative sums; place_columns inverts it."""
    need = need.to(torch.int32, memory_format=torch.contiguous_format)
    num = need.sum(-1, keepdim=True)
    used_rank = need.cumsum(-1) - 1
    unused_rank = num + (1 - need).cumsum(-1) - 1
    slot = torch.where(need == 1, used_rank, unused_rank).to(torch.int64).contiguous()
    return num.squeeze(-1).to(torch.int32), place_columns(slot)


def _sorted_indices(need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """_as_indices by a stable sort: aten kernels only, for the opaque ops below, where inductor never sees it.
    Five kernels where _as_indices takes about fifteen, which counts where the host issues every launch (each
    layer builds the routed tables afresh, forward only; a 350M / 8k step is host-bound)."""
    need = need.contiguous()  # the sort keeps its input's strides; flex reads rows as contiguous
    num = need.sum(-1, dtype=torch.int32)
    return num, torch.sort((~need).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)


@torch.library.custom_op("r1_ds::block_indices", mutates_args=())
def block_indices(need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """_as_indices as an opaque op: aten kernels, never inductor's. Flex's fused kernels read these counts
    and indices without bounds checks, so a wrong value is an illegal memory access rather than an error, and
    the routed (full) tables change with the weights; inside a compiled decoder block inductor would otherwise
    fuse this arithmetic into its own kernels (see place_columns and transposed_indices for inductor's code
    generation failing on it). With it, compiled blocks with L2 inside their graphs still fault at 8k tokens
    (benchmarks/results/train_throughput.md), so past 2,048 tokens they run L2 apart (FLEX_IN_BLOCK_GRAPH_MAX_LEN)."""
    return _sorted_indices(need)


@block_indices.register_fake
def _(need):
    return (
        torch.empty(need.shape[:-1], dtype=torch.int32, device=need.device),
        torch.empty(need.shape, dtype=torch.int32, device=need.device),
    )


@torch.library.custom_op("r1_ds::transposed_indices", mutates_args=())
def transposed_indices(need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """_as_indices of need's transpose (the query-side tables), as an opaque op: aten kernels, never inductor's.
    Inductor's Triton code generation fails on a fused kernel that reads a table transposed once the tables
    grow past a few hundred blocks (32k tokens and longer at paragraphs of 128, torch 2.11: "TypeError: list
    indices must be integers or slices, not NoneType" in TritonSymbols.get_block_shape, on the 2D-tiled
    transposed load)."""
    return _sorted_indices(need.transpose(-1, -2))


@transposed_indices.register_fake
def _(need):
    shape = (*need.shape[:-2], need.shape[-1], need.shape[-2])
    return (
        torch.empty(shape[:-1], dtype=torch.int32, device=need.device),
        torch.empty(shape, dtype=torch.int32, device=need.device),
    )


@functools.lru_cache(maxsize=32)
def _window_block_mask(T: int, window: int, block: int, device: str):
    """L1 mask, built once per (length, window, block, device) straight from block tables (no
    T x T evaluation): q - window < kv <= q. Blocks wholly inside the window are "full" (no
    element-wise mask in the kernel); the diagonal and the window's far edge are partial. Built
    outside inference mode (see _rope_grid)."""
    from torch.nn.attention.flex_attention import BlockMask

    def mask_mod(b, h, q, kv):
        return (kv <= q) & (kv > q - window)

    with torch.inference_mode(False):
        n = T // block
        qb = torch.arange(n, device=device)[:, None]
        kb = torch.arange(n, device=device)[None, :]
        q_lo, q_hi = qb * block, qb * block + block - 1
        k_lo, k_hi = kb * block, kb * block + block - 1
        any_ = (k_lo <= q_hi) & (k_hi > q_lo - window)  # some pair (q, kv) of the blocks is visible
        all_ = (k_hi <= q_lo) & (k_lo > q_hi - window)  # every pair is visible
        num, idx = _as_indices(any_ & ~all_)
        full_num, full_idx = _as_indices(all_)
        return BlockMask.from_kv_blocks(
            num[None, None],
            idx[None, None],
            full_num[None, None],
            full_idx[None, None],
            BLOCK_SIZE=block,
            mask_mod=mask_mod,
            seq_lengths=(T, T),
        )


def _pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad (B, T, d) to length n on the right (future positions: invisible to real queries)."""
    return x if x.shape[1] == n else F.pad(x, (0, 0, 0, n - x.shape[1]))


def paragraph_block_mask(
    idx: torch.Tensor, valid: torch.Tensor, *, n_par: int, length: int, paragraph_size: int, span: int
):
    """L2 block mask over keys laid out as [summary blocks | `length` tokens]. Each summary block is
    [null, g - 1 summaries]: summary j sits at kv index (j // (g - 1)) * g + 1 + j % (g - 1).

    Query paragraph b reads (partial blocks, masked element-wise) the summary blocks holding
    summaries b - span .. b - 1 and, as its one null key, the null of the block holding summary
    b - 1 (block 0 for b = 0); and (full blocks) the token blocks of its routed paragraphs
    idx[..., b, :valid]. Flex blocks are one paragraph long. A null in every summary block (not
    one null for all) keeps each block's readers to the query paragraphs near it: with a single
    shared null, the backward's dK/dV program of that block would loop over every query block.
    """
    tables = _paragraph_block_tables(idx, valid, n_par, length, paragraph_size, span)  # row-major (see _as_indices)
    return paragraph_block_mask_of(tables, n_par=n_par, length=length, paragraph_size=paragraph_size, span=span)


def paragraph_block_mask_of(tables, *, n_par: int, length: int, paragraph_size: int, span: int):
    """paragraph_block_mask from its tables (_paragraph_block_tables)."""
    from torch.nn.attention.flex_attention import BlockMask

    g = paragraph_size
    S = summary_len(n_par, g)
    # The element rule: flex's unfused (CPU, eager) path applies only mask_mod, and the fused kernel applies
    # it to partial blocks; full (routed) blocks skip it. Partial blocks are all summary blocks, where the
    # token rule is false, so the fused kernel gets the summary rule alone (no lookup in `routed` per score).
    if tables[0].is_cuda:
        mask_mod = l2_summary_mod(n_par=n_par, paragraph_size=g, span=span)
    else:
        mask_mod = l2_element_rule(tables[-1], n_par=n_par, paragraph_size=g, span=span)

    # The constructor, not from_kv_blocks: the query-side tables (for the backward's dK/dV loop) come
    # from the same compiled graph instead of a dozen more small kernels per layer.
    return BlockMask(
        seq_lengths=(length, S + length),
        kv_num_blocks=tables[0],
        kv_indices=tables[1],
        full_kv_num_blocks=tables[2],
        full_kv_indices=tables[3],
        q_num_blocks=tables[4],
        q_indices=tables[5],
        full_q_num_blocks=tables[6],
        full_q_indices=tables[7],
        BLOCK_SIZE=(g, g),
        mask_mod=mask_mod,
    )


def l2_element_rule(routed: torch.Tensor, *, n_par: int, paragraph_size: int, span: int):
    """The whole L2 rule as a mask_mod over [summary blocks | tokens]: the summary keys (l2_summary_mod) and the
    tokens of every paragraph routed for the query's paragraph, routed (B, H, n_qb, n_qb) from the block tables."""
    g = paragraph_size
    S = summary_len(n_par, g)
    last = routed.shape[-1] - 1
    summary = l2_summary_mod(n_par=n_par, paragraph_size=g, span=span)

    def mask_mod(b, h, q_idx, kv_idx_):
        token = (kv_idx_ >= S) & routed[b, h, q_idx // g, ((kv_idx_ - S) // g).clamp(0, last)]
        return summary(b, h, q_idx, kv_idx_) | token

    return mask_mod


def l2_summary_mod(*, n_par: int, paragraph_size: int, span: int):
    """L2's summary keys as a mask_mod (see paragraph_block_mask for the layout): query paragraph b sees
    summaries b - span .. b - 1 and the null of the block holding summary b - 1; false on every token key."""
    g = paragraph_size
    S = summary_len(n_par, g)

    def summary(b, h, q_idx, kv_idx_):
        blk, slot = kv_idx_ // g, kv_idx_ % g
        j = blk * (g - 1) + slot - 1
        qpar = q_idx // g
        in_summaries = kv_idx_ < S
        null = in_summaries & (slot == 0) & (blk == (qpar - 1).clamp(min=0) // (g - 1))
        return null | (in_summaries & (slot > 0) & (j < n_par) & (j < qpar) & (j >= qpar - span))

    return summary


@functools.lru_cache(maxsize=32)
def _summary_block_tables(n_qb: int, n_kv: int, n_sb: int, span: int, paragraph_size: int, device: str):
    """The block tables of L2's summary blocks, (kv_num, kv_idx, q_num, q_idx) without batch or head axes: query
    paragraph b reads (partial) the summary blocks holding summaries b - span .. b - 1 and the null of the block
    holding summary b - 1 (block 0 for b = 0). They depend on the shapes alone, so every layer and step of a length
    shares one copy (traced afresh inside a compiled region, where inductor fuses them). Built outside inference
    mode (see _rope_grid)."""
    g = paragraph_size
    with torch.inference_mode(False):
        qb = torch.arange(n_qb, device=device)
        lo = (qb - span).clamp(min=0) // (g - 1)  # block of summary b - span
        hi = (qb - 1).clamp(min=0) // (g - 1)  # block of summary b - 1, whose null b reads (block 0 for b = 0)
        # Block tables span every kv block (flex expects index rows as wide as the kv block count). Comparisons
        # only, no masked store or scatter: inductor's code for those broke at long lengths (C++ at 32k tokens;
        # see place_columns for CUDA).
        kvb = torch.arange(n_kv, device=device)
        need = (kvb[None] < n_sb) & (kvb[None] >= lo[:, None]) & (kvb[None] <= hi[:, None])  # (n_qb, n_kv)
        kv_num, kv_idx = _as_indices(need)  # in a compiled block, traced: inductor may fuse it
        q_num, q_idx = transposed_indices(need)
        return kv_num, kv_idx, q_num, q_idx


def _paragraph_block_tables(idx, valid, n_par: int, length: int, paragraph_size: int, span: int):
    """Block tables of paragraph_block_mask, all (B, H, ...): per query block, (kv_num, kv_idx) its
    partial summary blocks and (full_num, full_idx) its routed token blocks; the same transposed, per
    key block (q_num, q_idx, full_q_num, full_q_idx: the query blocks reading it); and routed
    (B, H, n_qb, n_qb), paragraph j routed for query paragraph b."""
    g = paragraph_size
    n_sb = summary_len(n_par, g) // g
    summary = _cached(_summary_block_tables, idx.shape[2], n_sb + length // g, n_sb, span, g, str(idx.device))
    return _routed_block_tables(idx, valid, *summary, n_par, length, g)


@compiled_on_cuda
def _routed_block_tables(idx, valid, kv_num, kv_idx, q_num, q_idx, n_par: int, length: int, paragraph_size: int):
    """_paragraph_block_tables from the summary blocks' tables (no batch or head axes, _summary_block_tables):
    the routed blocks' tables, and every table per batch row and head. One compiled graph on GPU (dozens of
    tiny kernels left eager)."""
    g = paragraph_size
    B, H, n_qb, _ = idx.shape
    n_sb = summary_len(n_par, g) // g
    kvb = torch.arange(n_sb + length // g, device=idx.device)
    # routed paragraph j is token block n_sb + j: (B, H, n_qb, K, n_kv) compared and reduced over the
    # K <= top_k slots (no slot routed when nothing is routable: K = 0, a short sequence or top_k = 0)
    full = ((idx[..., None] + n_sb == kvb) & valid[..., None]).any(-2)
    full_num, full_idx = block_indices(full)  # from the routing: aten kernels (see block_indices)
    full_q_num, full_q_idx = transposed_indices(full)

    def per_head(x):
        return x[None, None].expand(B, H, *x.shape).contiguous()

    return (
        per_head(kv_num),
        per_head(kv_idx),
        full_num,
        full_idx,
        per_head(q_num),
        per_head(q_idx),
        full_q_num,
        full_q_idx,
        full[..., n_sb:].contiguous(),
    )


@functools.lru_cache(maxsize=16)
def _rope_grid(n: int, step: int, size: int, theta: float, device: str):
    """rope_table at positions i * step + (step - 1) / 2, i < n (tokens: step 1; summaries: the group
    centres), cached: every layer of a forward pass asks for the same tables. Built outside
    inference mode: an inference tensor in the cache could not be saved for a later backward."""
    with torch.inference_mode(False):
        return rope_table(summary_positions(n, step, device), size, theta)


def rope_grid(n: int, step: int, size: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """_rope_grid through its cache; inside a compiled region, the opaque op rope_grid_table."""
    if torch.compiler.is_compiling():
        return rope_grid_table(n, step, size, float(theta), torch.device(device))
    return _rope_grid(n, step, size, float(theta), str(device))


@torch.library.custom_op("r1_ds::rope_grid_table", mutates_args=())
def rope_grid_table(
    n: int, step: int, size: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """rope_table at the grid of _rope_grid, as an op the compiler cannot see into. Traced as plain ops, the
    table is a function of an arange that inductor fuses into every kernel reading it: each element of q and k
    then evaluates its own fp32 cos and sin, forward and backward (the costliest kernel after the GEMMs in a
    compiled 1.3B / 2k step on an H100: 575 us each, 7% of the step). Opaque, it is one small kernel that
    writes the (n, size / 2) table, which the fused kernels read."""
    return rope_table(summary_positions(n, step, device), size, theta)


@rope_grid_table.register_fake
def _(n, step, size, theta, device):
    cos = torch.empty(n, size // 2, dtype=torch.float32, device=device)
    return cos, torch.empty_like(cos)


_route_compiled = compiled_on_cuda(route_paragraphs)  # ~40 small kernels as one graph on GPU


@compiled_on_cuda
def _flex_inputs(
    q,
    k,
    v,
    cos,
    sin,
    cos_p,
    sin_p,
    cos_d,
    sin_d,
    n_par: int,
    summary_len: int,
    n_doc: int,
    paragraph_size: int,
    document_size: int,
):
    """Every level's operands in one memory pass, all (B, ., d) with heads still folded:
    rotated queries and keys (L1's); L2 keys / values laid out as [summary blocks of (null, g - 1
    summaries) | tokens] (see paragraph_block_mask); L3 keys / values [null, document summaries].
    q, k, v are padded to whole paragraphs; summaries come from complete groups only.

    L1 gets the rotated keys as an output of their own, not as a slice of L2's buffer: the backward of a
    slice taken outside this graph writes a zero-filled gradient of the whole buffer and adds it to L2's
    (two (B, S + T, d) passes each for keys and values, 2.6 of 17.2 ms at 8k x 8 on an H100); here the
    two gradients meet inside this graph's fused backward."""
    B, Tp, d = q.shape
    g, G = paragraph_size, document_size
    n_sb = summary_len // g
    zero = k.new_zeros(B, 1, d)

    def summary_blocks(s):  # (B, n_par, d) -> (B, summary_len, d): each block [null, g - 1 summaries]
        s = F.pad(s, (0, 0, 0, n_sb * (g - 1) - n_par)).view(B, n_sb, g - 1, d)
        return torch.cat([s.new_zeros(B, n_sb, 1, d), s], dim=2).view(B, summary_len, d)

    ks = rotary(pool_groups(k[:, : n_par * g], g), cos_p, sin_p)
    kr = rotary(k, cos, sin)
    kbuf = torch.cat([summary_blocks(ks), kr], dim=1)
    vbuf = torch.cat([summary_blocks(pool_groups(v[:, : n_par * g], g)), v], dim=1)
    k3 = torch.cat([zero, rotary(pool_groups(k[:, : n_doc * G], G), cos_d, sin_d)], dim=1)
    v3 = torch.cat([zero, pool_groups(v[:, : n_doc * G], G)], dim=1)
    return rotary(q, cos, sin), kr, kbuf, vbuf, k3, v3


def _document_attention_with(attend, qr, k3, v3, n_heads: int, document_size: int, length: int):
    """L3 over [null, document summaries], per head through `attend(q, k, v, mask, scale)` with the dense
    (Tp, 1 + n_doc) bool mask. -> (B, length, d)"""
    B, Tp, d = qr.shape
    o = attend(
        split_heads(qr, n_heads),
        split_heads(k3, n_heads),
        split_heads(v3, n_heads),
        _document_mask(Tp, k3.shape[1], document_size, qr.device),
        (d // n_heads) ** -0.5,
    )
    return merge_heads(o)[:, :length]


def _sdpa(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# SDPA never holds the score matrix; the explicit form is two thin GEMMs and a softmax inductor fuses
_document_attention_sdpa = functools.partial(_document_attention_with, _sdpa)
_document_attention_explicit = functools.partial(_document_attention_with, _attend)


def _document_mask(Tp: int, n_keys: int, document_size: int, device) -> torch.Tensor:
    """(Tp, n_keys): the null key, then the complete document groups before the query's group."""
    tpos = torch.arange(Tp, device=device)[:, None]
    jd = torch.arange(n_keys, device=device)[None, :]
    return (jd == 0) | (jd - 1 < tpos // document_size)


# L3 has 1 + T / G keys. Up to one key tile of them, the explicit scores are small and beat SDPA's masked
# path (H200, d 2048, fwd+bwd: 1.56 vs 2.33 ms at 8k x 8, 4.30 vs 4.84 ms at 64k); past that their
# (T, 1 + T / G) memory grows with T^2 / G, which SDPA never holds.
EXPLICIT_L3_MAX_KEYS = 128


# L3's key count is padded to a multiple of this with masked zero keys: 1 + T / G keys (9 at 8k, 65 at 64k) leave
# every score row and the GEMMs' leading dimensions off the 16-byte alignment cuBLAS's fast bf16 kernels need.
L3_KEY_MULTIPLE = 8


@compiled_on_cuda
def _document_attention(qr, k3, v3, n_heads: int, document_size: int, length: int):
    """L3 over [null, document summaries]. -> (B, length, d)"""
    fn = _document_attention_explicit if k3.shape[1] <= EXPLICIT_L3_MAX_KEYS else _document_attention_sdpa
    pad = -k3.shape[1] % L3_KEY_MULTIPLE  # the padding keys come after every document: no query's mask admits them
    return fn(qr, _pad_to(k3, k3.shape[1] + pad), _pad_to(v3, v3.shape[1] + pad), n_heads, document_size, length)


def _window_attention_banded(q, k, v, n_heads: int, window: int, block: int):
    """L1 as explicit banded attention on (B, Tp, d) operands, Tp a multiple of `block`: query block i
    reads key blocks i - n_prev .. i (all the window can reach), score tiles of block x (n_prev + 1) block
    from batched GEMMs and a masked softmax that inductor fuses. -> (B, H, Tp, hd) like flex.

    No key or value block is copied beside its neighbours. q, k, v are laid out once per head as P = n_prev +
    nb blocks (k, v: n_prev zero blocks first; q: n_prev zero blocks last), flattened to (B H P) blocks;
    query block n then pairs with key block n - j for every shift j, so each shift is one strided GEMM over
    two slices of the same buffers. The pairs that cross from one (batch, head) into the next land in rows
    of padding queries, which are dropped. The forward writes, and the backward saves, one per-head copy of
    q, k and v each.

    Why not flex: with 8 heads of d = 2048 the head size is 256, where flex's kernel runs small tiles
    (H200, 8k x 8, fwd+bwd: 5.59 ms, against 3.71 ms for a banded form that copied each key block beside its
    neighbour; this form copies less)."""
    B, Tp, d = q.shape
    H, hd, nb = n_heads, d // n_heads, Tp // block
    n_prev = _blocks_before(window, block)
    P = nb + n_prev

    def flat(x, front: int):  # (B, Tp, d) -> (B H P, block, hd), `front` zero blocks first, the rest last
        xb = x.view(B, nb, block, H, hd).permute(0, 3, 1, 2, 4)
        return F.pad(xb, (0, 0, 0, 0, front, n_prev - front)).reshape(B * H * P, block, hd)

    qf, kf, vf = flat(q, 0), flat(k, n_prev), flat(v, n_prev)
    N = B * H * P - n_prev  # query rows n < N pair with key block n + n_prev - j for shift j = n_prev .. 0

    def keys(x, j):  # the key (value) block j blocks before each query block's own
        return x[n_prev - j : n_prev - j + N]

    scores = torch.cat([qf[:N] @ keys(kf, j).transpose(-1, -2) for j in range(n_prev, -1, -1)], dim=-1)
    qi = torch.arange(block, device=q.device)[:, None] + n_prev * block  # query's place in its key tile
    kj = torch.arange((n_prev + 1) * block, device=q.device)[None, :]
    band = (kj <= qi) & (kj > qi - window)
    i = torch.arange(N, device=q.device) % P  # query block index within its (batch, head); >= nb: padding
    mask = band & (kj >= ((n_prev - i).clamp(min=0) * block)[:, None, None])  # no keys before the start
    p = torch.softmax(scores.float().mul(hd**-0.5).masked_fill(~mask, float("-inf")), dim=-1).to(q.dtype)
    o = p[..., n_prev * block :] @ keys(vf, 0)
    for j in range(1, n_prev + 1):
        o = torch.baddbmm(o, p[..., (n_prev - j) * block : (n_prev - j + 1) * block], keys(vf, j))
    o = F.pad(o, (0, 0, 0, 0, 0, n_prev)).view(B, H, P, block, hd)[:, :, :nb]
    return o.reshape(B, H, Tp, hd)


def _blocks_before(window: int, block: int) -> int:
    """Earlier key blocks a causal window of `window` tokens reaches into from any query of a block."""
    return -(-(window - 1) // block)


# Up to this many blocks of keys per query block, L1 runs as explicit banded attention; a wider window
# (relative to the paragraph) goes to flex, whose block-sparse kernel skips the blocks inside the band.
BANDED_L1_MAX_BLOCKS = 3

# L1's kernel on CUDA: "triton" (window_attention_triton.window_attention: fused kernels on the (B, T, d) layout,
# no per-head copies and no score matrix in memory) or "banded" (the explicit banded form up to
# BANDED_L1_MAX_BLOCKS key blocks per query block, else flex). Calls the Triton kernels cannot take (no triton
# installed, fp32, a head size that is no power of two, a GPU with too little shared memory for their tiles) run
# the banded form (or flex, for windows wider than BANDED_L1_MAX_BLOCKS). R1_L1_CUDA_KERNEL in the environment
# chooses for a whole process; benchmarks take --l1-kernel.
L1_CUDA_KERNELS = ("triton", "banded")
L1_CUDA_KERNEL = "triton"


def _triton_l1_takes(qr: torch.Tensor, n_heads: int, window: int) -> bool:
    """Whether the Triton kernels can run this call: triton installed, bf16 / fp16, a power-of-two head size, a
    length their tiles divide, enough shared memory (window_attention_triton.unsupported). Other calls run the
    banded form or flex."""
    from . import window_attention_triton as wat

    return wat.available() and wat.unsupported(qr, n_heads, window) is None


def set_l1_cuda_kernel(name: str, source: str = "L1 CUDA kernel") -> None:
    """Choose L1's CUDA kernel for this process (benchmarks' --l1-kernel, R1_L1_CUDA_KERNEL at import)."""
    global L1_CUDA_KERNEL
    if name not in L1_CUDA_KERNELS:
        raise ValueError(f"{source} {name!r} is not one of {L1_CUDA_KERNELS}")
    L1_CUDA_KERNEL = name


set_l1_cuda_kernel(os.environ.get("R1_L1_CUDA_KERNEL", L1_CUDA_KERNEL), "R1_L1_CUDA_KERNEL (unset it for the default):")


_window_attention_banded_compiled = compiled_on_cuda(_window_attention_banded)


def flex_operands(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    level_heads,
    paragraph_size: int,
    document_size: int,
    rope_theta: float,
):
    """`_flex_inputs` of (B, T, d) q, k, v padded to whole paragraphs, with the cached rope tables:
    (qr, kr, vp, kbuf, vbuf, k3, v3, S): kr the rotated keys and vp the padded values (L1's), S the length
    of L2's summary region at the front of kbuf / vbuf."""
    B, T, d = q.shape
    g, G = paragraph_size, document_size
    Tp = -(-T // g) * g  # padded to whole paragraphs
    n_par, n_doc = T // g, T // G
    S = summary_len(n_par, g)
    r = rope_size(d, level_heads)

    def grid(n, step):
        return rope_grid(n, step, r, rope_theta, q.device)

    vp = _pad_to(v, Tp)
    qr, kr, kbuf, vbuf, k3, v3 = _flex_inputs(
        _pad_to(q, Tp),
        _pad_to(k, Tp),
        vp,
        *grid(Tp, 1),
        *grid(n_par, g),
        *grid(n_doc, G),
        n_par,
        S,
        n_doc,
        g,
        G,
    )
    return qr, kr, vp, kbuf, vbuf, k3, v3, S


def hierarchical_attention_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    level_heads,
    window: int,
    paragraph_size: int,
    document_size: int,
    top_k: int,
    rope_theta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast path for a whole causal sequence (training / prefill): same result as the eager
    reference with q_pos = arange(T), computed with FlexAttention block-sparse kernels.

    One compiled pass rotates q and k once for all levels and writes L2's keys as [summary blocks of
    (null, g - 1 summaries) | tokens]; L1 reads the rotated keys, through the Triton window kernels on
    CUDA (L1_CUDA_KERNEL), else as explicit banded attention when its window spans few paragraphs, else
    flex. L2's block mask gives each query paragraph the summary blocks it needs (partial blocks, masked
    element-wise) and its routed paragraphs as full blocks, so unrouted paragraphs cost nothing. Flex
    blocks are one paragraph. L3 (1 + T / G keys) is an explicit softmax while its keys fit one tile, else SDPA.

    The sequence is computed at flex_length(T) (zero-padded), so the compiled kernels see a bounded set of
    lengths. The result at every real position is unchanged: a query sees no later token at L1, and at L2
    and L3 only groups that end before its own group starts, so a group holding padding (the last real
    group, completed with zeros, or groups of padding alone) is read only by padded queries, and routing
    for a real paragraph looks only at earlier paragraphs. The padded outputs are cut off (no gradient).
    """
    T_real = q.shape[1]
    T = flex_length(T_real, paragraph_size)
    q, k, v = (_pad_to(x, T) for x in (q, k, v))
    B, _, d = q.shape
    g, G = paragraph_size, document_size
    qr, kr, vp, kbuf, vbuf, k3, v3, S = flex_operands(
        q, k, v, level_heads=level_heads, paragraph_size=g, document_size=G, rope_theta=rope_theta
    )
    Tp = qr.shape[1]

    H = level_heads[0]
    if L1_CUDA_KERNEL == "triton" and q.is_cuda and _triton_l1_takes(qr, H, window):
        from .window_attention_triton import window_attention

        h1 = window_attention(qr, kr, vp, H, window)  # (B, Tp, d), heads side by side already
    elif _blocks_before(window, g) + 1 <= BANDED_L1_MAX_BLOCKS:
        h1 = merge_heads(_window_attention_banded_compiled(qr, kr, vp, H, window, g))
    else:
        o1 = _flex(
            split_heads(qr, H),
            split_heads(kr, H),
            split_heads(vp, H),
            _cached(_window_block_mask, Tp, window, g, str(q.device)),
            (d // H) ** -0.5,
        )
        h1 = merge_heads(o1)

    H = level_heads[1]
    idx, valid, _ = _route_compiled(
        q.detach(), k.detach(), n_heads=H, paragraph_size=g, top_k=top_k, first_block=0, n_blocks=Tp // g
    )  # routing carries no gradient
    if not torch.compiler.is_compiling() or Tp <= FLEX_IN_BLOCK_GRAPH_MAX_LEN:
        attend = _paragraph_attention
    else:
        attend = paragraph_attention_apart if L2_APART == "op" else _paragraph_attention_behind_break
    h2 = attend(qr, kbuf, vbuf, idx, valid, H, T // g, g, G // g)

    h3 = _document_attention(qr, k3, v3, level_heads[2], G, T)
    return h1[:, :T_real], h2[:, :T_real], h3[:, :T_real]


def _paragraph_attention(qr, kbuf, vbuf, idx, valid, n_heads: int, n_par: int, paragraph_size: int, span: int):
    """L2 through FlexAttention: the block mask of the routing (idx, valid), then the block-sparse kernel over
    kbuf / vbuf ([summary blocks | tokens]). -> (B, Tp, d)"""
    tables = _paragraph_block_tables(idx, valid, n_par, qr.shape[1], paragraph_size, span)
    return _paragraph_attention_of(qr, kbuf, vbuf, tables, n_heads, n_par, paragraph_size, span)


def _paragraph_attention_of(qr, kbuf, vbuf, tables, n_heads: int, n_par: int, paragraph_size: int, span: int):
    """_paragraph_attention from the block tables (_paragraph_block_tables). -> (B, Tp, d)"""
    d = qr.shape[-1]
    block_mask = paragraph_block_mask_of(
        tables, n_par=n_par, length=qr.shape[1], paragraph_size=paragraph_size, span=span
    )
    H = n_heads
    return merge_heads(
        _flex(split_heads(qr, H), split_heads(kbuf, H), split_heads(vbuf, H), block_mask, (d // H) ** -0.5)
    )


# Inside a compiled decoder block (model.compile), sequences of up to this many tokens trace L2's block mask and
# FlexAttention kernels into the block's graph. Longer ones run them apart, as their own compiled graphs (those of
# the eager path): at 8k tokens, R1 350M under DeepSpeed faulted with an illegal memory access in the FlexAttention
# backward kernel of the block's backward graph (benchmarks/results/train_throughput.md), while the same kernels
# compiled on their own train at every length. The rest of the block (projections, L1, L3, routing, gate, norms,
# MLP) stays compiled.
FLEX_IN_BLOCK_GRAPH_MAX_LEN = 2048

# How a compiled block runs L2 apart:
#   "break": behind a graph break (torch.compiler.disable): dynamo splits every frame on the call stack at the
#            call, six graphs a block forward and six backward, each with its own guards and runtime wrappers (a
#            350M / 8k step leaves the GPU idle 39% of the time: train_throughput.md). The default: the way
#            trained on a GPU at 8k.
#   "op":    as one opaque op with its own backward (paragraph_attention_apart): the block stays one graph forward
#            and one backward; the backward recomputes L2's FlexAttention forward over the forward's block tables,
#            which the op returns beside its output. Held to eager on CPU with dense attention inside
#            (tests/test_model.py) and, on a GPU, by tests/test_cuda_fast_path.py; the trainer refuses it until a
#            GPU run has trained with it (config.L2_APART_TRAINED).
# R1_L2_APART in the environment chooses for a whole process; benchmarks take --l2-apart.
L2_APART_MODES = ("break", "op")
L2_APART = os.environ.get("R1_L2_APART", "break")
if L2_APART not in L2_APART_MODES:
    raise ValueError(f"R1_L2_APART={L2_APART!r} is not one of {L2_APART_MODES}; unset it for the default")

# torch.compiler.disable: dynamo runs this call as Python (a graph break), where is_compiling() is false and the
# calls inside take their own compiled graphs (compiled_on_cuda, _compiled_flex).
_paragraph_attention_behind_break = torch.compiler.disable(_paragraph_attention)


def paragraph_attention_apart(qr, kbuf, vbuf, idx, valid, n_heads: int, n_par: int, paragraph_size: int, span: int):
    """_paragraph_attention through the opaque op paragraph_attention_tables_apart. -> (B, Tp, d)"""
    return paragraph_attention_tables_apart(qr, kbuf, vbuf, idx, valid, n_heads, n_par, paragraph_size, span)[0]


@torch.library.custom_op("r1_ds::paragraph_attention_tables_apart", mutates_args=())
def paragraph_attention_tables_apart(
    qr: torch.Tensor,
    kbuf: torch.Tensor,
    vbuf: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    n_heads: int,
    n_par: int,
    paragraph_size: int,
    span: int,
) -> list[torch.Tensor]:
    """[L2's output (B, Tp, d), then its nine block tables (_paragraph_block_tables)], as an op the compiler cannot
    see into: inside it, is_compiling() is false, so the tables and FlexAttention run as their own compiled graphs
    (those of the eager path), while the compiled block around it stays one graph. The tables come out so that
    the backward (paragraph_attention_apart_backward) reads them instead of building them again. Outputs are
    contiguous, as the fake says: the compiler lays out what reads them by the fake's strides."""
    tables = _paragraph_block_tables(idx, valid, n_par, qr.shape[1], paragraph_size, span)
    out = _paragraph_attention_of(qr, kbuf, vbuf, tables, n_heads, n_par, paragraph_size, span)
    return [out.contiguous(), *(t.contiguous() for t in tables)]


@paragraph_attention_tables_apart.register_fake
def _(qr, kbuf, vbuf, idx, valid, n_heads, n_par, paragraph_size, span):
    B, H, n_qb, _ = idx.shape
    n_kv = summary_len(n_par, paragraph_size) // paragraph_size + qr.shape[1] // paragraph_size

    def table(*shape, dtype=torch.int32):
        return qr.new_empty((B, H, *shape), dtype=dtype)

    return [
        qr.new_empty(qr.shape),
        table(n_qb),  # kv_num
        table(n_qb, n_kv),  # kv_idx
        table(n_qb),  # full_num
        table(n_qb, n_kv),  # full_idx
        table(n_kv),  # q_num
        table(n_kv, n_qb),  # q_idx
        table(n_kv),  # full_q_num
        table(n_kv, n_qb),  # full_q_idx
        table(n_qb, n_qb, dtype=torch.bool),  # routed
    ]


def _autograd_recorded():
    """A guard under which autograd records again: an op's implementation runs below the autograd dispatch keys,
    where nothing records a backward graph even with grad mode on. The excluded set holds functionality bits:
    AutogradFunctionality covers every backend's autograd key; AutogradOther and AutogradNestedTensor are keys of
    their own."""
    from torch._C import DispatchKey

    exclude = torch._C._dispatch_tls_local_exclude_set()
    autograd = (DispatchKey.AutogradFunctionality, DispatchKey.AutogradOther, DispatchKey.AutogradNestedTensor)
    for key in (*autograd, DispatchKey.ADInplaceOrView):
        if exclude.has(key):
            exclude = exclude.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@torch.library.custom_op("r1_ds::paragraph_attention_apart_backward", mutates_args=())
def paragraph_attention_apart_backward(
    grad: torch.Tensor,
    qr: torch.Tensor,
    kbuf: torch.Tensor,
    vbuf: torch.Tensor,
    tables: list[torch.Tensor],
    n_heads: int,
    n_par: int,
    paragraph_size: int,
    span: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of paragraph_attention_tables_apart's output for qr, kbuf, vbuf: its FlexAttention forward again
    over the forward's tables, recorded, then FlexAttention's own fused backward through autograd. Recomputing
    costs one L2 forward a layer; keeping the forward's autograd graph instead would have to carry it from one op
    call to another outside the compiler's view."""
    with _autograd_recorded(), torch.enable_grad():
        leaves = [x.detach().requires_grad_(True) for x in (qr, kbuf, vbuf)]
        out = _paragraph_attention_of(*leaves, tables, n_heads, n_par, paragraph_size, span)
        dq, dk, dv = torch.autograd.grad(out, leaves, grad)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()  # autograd's may come transposed


@paragraph_attention_apart_backward.register_fake
def _(grad, qr, kbuf, vbuf, tables, n_heads, n_par, paragraph_size, span):
    return qr.new_empty(qr.shape), kbuf.new_empty(kbuf.shape), vbuf.new_empty(vbuf.shape)


def _apart_setup(ctx, inputs, output):
    qr, kbuf, vbuf, idx, valid, *sizes = inputs
    ctx.save_for_backward(qr, kbuf, vbuf, *output[1:])
    ctx.sizes = sizes


def _apart_backward(ctx, grads):
    qr, kbuf, vbuf, *tables = ctx.saved_tensors
    dq, dk, dv = paragraph_attention_apart_backward(grads[0].contiguous(), qr, kbuf, vbuf, tables, *ctx.sizes)
    return dq, dk, dv, None, None, None, None, None, None


paragraph_attention_tables_apart.register_autograd(_apart_backward, setup_context=_apart_setup)
