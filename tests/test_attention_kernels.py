"""The flex path's kernels agree with each other where two can serve a level: L1 banded == L1 flex, L3
explicit == L3 SDPA, on the operands `flex_operands` lays out (tests/test_model.py holds the whole flex
path to the eager reference, through whichever kernel the config selects)."""

import pytest
import torch

from r1_ds.model import hierarchical_attention as ha


def _operands(T, g, G, heads, seed):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(2, T, 64) for _ in range(3))
    return ha.flex_operands(q, k, v, level_heads=heads, paragraph_size=g, document_size=G, rope_theta=1e4)


# windows inside one block, at a block's edge, reaching two, three and four blocks, and of one token
@pytest.mark.parametrize(
    "T, window, g", [(96, 8, 8), (96, 5, 8), (128, 16, 16), (96, 9, 8), (96, 17, 8), (96, 24, 8), (96, 1, 8)]
)
def test_banded_window_attention_equals_flex_l1(T, window, g):
    heads = (2, 4, 8)
    qr, kr, vp, kbuf, vbuf, _, _, S = _operands(T, g, 4 * g, heads, seed=0)
    # L1's own key / value operands are the token part of L2's buffers
    torch.testing.assert_close(kr, kbuf[:, S:], atol=0, rtol=0)
    torch.testing.assert_close(vp, vbuf[:, S:], atol=0, rtol=0)
    H = heads[0]
    flex = ha._flex(
        ha.split_heads(qr, H),
        ha.split_heads(kr, H),
        ha.split_heads(vp, H),
        ha._window_block_mask(T, window, g, "cpu"),
        (64 // H) ** -0.5,
    )
    banded = ha._window_attention_banded(qr, kr, vp, H, window, g)
    torch.testing.assert_close(banded, flex, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("window, g", [(8, 8), (5, 8), (17, 8), (24, 8)])
def test_banded_window_attention_gradients_equal_dense_masked_attention(window, g):
    """The banded form's forward and backward against plain masked attention over all T keys (float64 operands,
    scores rounded through fp32 on both sides): its shifted views of one key buffer must route every gradient
    back to the key it came from."""
    T, H, d = 48, 2, 16
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, T, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pos = torch.arange(T)
    mask = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - window)
    go = torch.randn(2, H, T, d // H, dtype=torch.float64)
    ref = ha._attend(*(ha.split_heads(x, H) for x in (q, k, v)), mask, (d // H) ** -0.5)
    out = ha._window_attention_banded(q, k, v, H, window, g)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("T, explicit", [(96, True), (77, True), (320, True), (320, False)])
def test_l3_with_padded_keys_equals_sdpa_over_the_real_keys(T, explicit, monkeypatch):
    """_document_attention pads L3's 1 + T / G keys to a multiple of L3_KEY_MULTIPLE; no query may see the padding,
    through either kernel (explicit=False: SDPA, as past one tile of keys)."""
    if not explicit:
        monkeypatch.setattr(ha, "EXPLICIT_L3_MAX_KEYS", 0)
    g, G, heads = 8, 32, (2, 4, 8)
    qr, _, _, _, _, k3, v3, _ = _operands(T, g, G, heads, seed=3)
    assert k3.shape[1] % ha.L3_KEY_MULTIPLE != 0  # padding happens
    ref = ha._document_attention_sdpa(qr, k3, v3, heads[2], G, T)
    torch.testing.assert_close(ha._document_attention(qr, k3, v3, heads[2], G, T), ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("T", [96, 77])
def test_explicit_document_attention_equals_sdpa_l3(T):
    g, G, heads = 8, 32, (2, 4, 8)
    qr, _, _, _, _, k3, v3, _ = _operands(T, g, G, heads, seed=1)
    ref = ha._document_attention_sdpa(qr, k3, v3, heads[2], G, T)
    out = ha._document_attention_explicit(qr, k3, v3, heads[2], G, T)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_l3_takes_sdpa_once_its_keys_outgrow_one_tile(monkeypatch):
    calls = []
    for name in ("_document_attention_explicit", "_document_attention_sdpa"):
        monkeypatch.setattr(ha, name, lambda *a, name=name: calls.append(name))
    x = torch.zeros(1, 8, 16)
    for n_keys in (ha.EXPLICIT_L3_MAX_KEYS, ha.EXPLICIT_L3_MAX_KEYS + 1):
        ha._document_attention(x, torch.zeros(1, n_keys, 16), torch.zeros(1, n_keys, 16), 2, 4, 8)
    assert calls == ["_document_attention_explicit", "_document_attention_sdpa"]


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 16, 17), (1, 1, 64, 65)])
def test_block_indices_equal_a_stable_argsort(shape):
    """_as_indices partitions each row without a sort; flex reads it as a stable argsort would order it."""
    torch.manual_seed(0)
    for density in (0.0, 0.3, 1.0):
        need = torch.rand(shape) < density
        num, idx = ha._as_indices(need)
        assert num.dtype == idx.dtype == torch.int32
        assert torch.equal(num, need.sum(-1).int())
        assert torch.equal(idx, torch.argsort((~need).to(torch.int8), dim=-1, stable=True).int())
        compiled = torch.compile(ha._as_indices, dynamic=False)(need)  # inductor (C++ here; GPU: tests/test_cuda_*)
        assert torch.equal(compiled[0], num) and torch.equal(compiled[1], idx)
        for table in ha._as_indices(need.transpose(-1, -2)):  # the query-side tables come from transposed views
            assert table.is_contiguous(), f"strides {table.stride()}: the fused kernels read rows as contiguous"
        # the opaque ops sort instead (aten kernels): the same tables, row-major
        for op, view in ((ha.block_indices, need), (ha.transposed_indices, need.transpose(-1, -2))):
            for got, want in zip(op(need), ha._as_indices(view)):
                assert got.dtype == torch.int32 and got.is_contiguous() and torch.equal(got, want), op


TABLES = (
    "kv_num_blocks",
    "kv_indices",
    "full_kv_num_blocks",
    "full_kv_indices",
    "q_num_blocks",
    "q_indices",
    "full_q_num_blocks",
    "full_q_indices",
)


def test_block_tables_are_row_major():
    """The fused GPU kernels step through a row of block indices one element at a time, whatever the tensor's
    strides: a transposed table is read as the wrong blocks, silently. The query-side tables are built from
    transposed views, and one of them came out column-major: R1's GPU backward then read wrong key blocks
    (commits 91839fd to 90d05e4; the loss stopped falling). The CPU path never reads the tables, so only this shows it."""
    torch.manual_seed(0)
    T, g = 256, 8
    idx, valid, _ = ha.route_paragraphs(
        torch.randn(2, T, 32),
        torch.randn(2, T, 32),
        n_heads=2,
        paragraph_size=g,
        top_k=3,
        first_block=0,
        n_blocks=T // g,
    )
    masks = {
        "L1": ha._window_block_mask(T, 16, g, "cpu"),
        "L2": ha.paragraph_block_mask(idx, valid, n_par=T // g, length=T, paragraph_size=g, span=4),
    }
    for level, mask in masks.items():
        for name in TABLES:
            table = getattr(mask, name)
            assert table.is_contiguous(), f"{level} {name} has strides {table.stride()}"


def test_block_index_ops_agree_with_their_fake_versions():
    """Inside a compiled block, inductor lays out the tables by the fake versions of these ops: a fake shape or
    stride that differs from the real output makes flex's kernels read the wrong memory on the GPU."""
    g = torch.Generator().manual_seed(0)
    need = torch.rand(2, 3, 16, 17, generator=g) < 0.3
    slot = torch.stack([torch.randperm(17, generator=g) for _ in range(2 * 3 * 16)]).view(2, 3, 16, 17)
    cases = [
        (ha.place_columns, (slot,)),
        (ha.block_indices, (need,)),
        (ha.block_indices, (need[0, 0],)),
        (ha.transposed_indices, (need,)),
        (ha.transposed_indices, (need.transpose(-1, -2).contiguous().transpose(-1, -2),)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
        real = op(*args)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = op(*(mode.from_tensor(a) for a in args))
        for r, f in zip(*((x if isinstance(x, tuple) else (x,)) for x in (real, fake))):
            assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype), op


def _l2_tables_check(tables, n_qb, n_kv, n_sb):
    """What flex's kernels read without a bounds check: per row a count in [0, columns] and a permutation of
    the columns; the query-side tables the transpose of the key-side ones; no block both partial and full."""
    kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx, _ = tables

    def dense(num, ind):
        used = torch.arange(ind.shape[-1]) < num[..., None].long()
        return torch.zeros(ind.shape, dtype=torch.bool).scatter(-1, ind.long(), used)

    for name, num, ind, rows, cols in (
        ("kv", kv_num, kv_idx, n_qb, n_kv),
        ("full_kv", full_num, full_idx, n_qb, n_kv),
        ("q", q_num, q_idx, n_kv, n_qb),
        ("full_q", full_q_num, full_q_idx, n_kv, n_qb),
    ):
        assert num.shape[-1:] == (rows,) and ind.shape[-2:] == (rows, cols), name
        assert num.dtype == ind.dtype == torch.int32 and num.is_contiguous() and ind.is_contiguous(), name
        assert 0 <= num.min() and num.max() <= cols, f"{name} counts outside [0, {cols}]"
        assert torch.equal(ind.sort(-1).values, torch.arange(cols, dtype=torch.int32).expand(ind.shape)), name
    partial, full = dense(kv_num, kv_idx), dense(full_num, full_idx)
    assert torch.equal(partial.transpose(-1, -2), dense(q_num, q_idx))
    assert torch.equal(full.transpose(-1, -2), dense(full_q_num, full_q_idx))
    assert not (partial & full).any(), "a block both partial and full"
    assert not full[..., :n_sb].any(), "a summary block among the routed (full) ones"
    return full


@pytest.mark.parametrize("case", ["routed", "peaked", "duplicates", "last", "none"])
def test_l2_block_tables_hold_what_the_fused_kernels_read(case):
    """L2's tables for routing of every kind, built as on the GPU (eager and traced through the compiler with
    the ops' fake versions): routing that changes with the weights must never give a table flex's kernels read
    out of bounds, nor a routed block at or after the query's own paragraph."""
    B, H, T, g, K, span = 2, 4, 1024, 16, 4, 4
    n_qb = T // g
    n_sb = ha.summary_len(n_qb, g) // g
    n_kv = n_sb + n_qb
    gen = torch.Generator().manual_seed(0)
    if case in ("routed", "peaked"):  # the router itself; peaked: softmax underflow, ties at p = 0
        q, k = torch.randn(B, T, 64, generator=gen), torch.randn(B, T, 64, generator=gen)
        scale = 1e4 if case == "peaked" else 1.0
        idx, valid, _ = ha.route_paragraphs(
            q * scale, k, n_heads=H, paragraph_size=g, top_k=K, first_block=0, n_blocks=n_qb
        )
    else:
        idx = {"duplicates": torch.full((B, H, n_qb, K), 3), "last": torch.full((B, H, n_qb, K), n_qb - 1)}.get(
            case, torch.randint(0, n_qb, (B, H, n_qb, K), generator=gen)
        )
        valid = torch.full((B, H, n_qb, K), case != "none")
    fn = ha._paragraph_block_tables  # CPU: plain torch
    eager = fn(idx, valid, n_qb, T, g, span)
    traced = torch.compile(fn, fullgraph=True, dynamic=False, backend="aot_eager")(idx, valid, n_qb, T, g, span)
    for a, b in zip(eager, traced):
        assert torch.equal(a, b)
    full = _l2_tables_check(eager, n_qb, n_kv, n_sb)
    if case in ("routed", "peaked"):  # routed token block n_sb + j only for j < the query's paragraph b
        b, j = torch.arange(n_qb)[:, None], torch.arange(n_kv)[None, :] - n_sb
        assert not (full & (j >= b)).any(), "a paragraph routed to itself or a later one"
        assert full.any()


def test_flex_length_bounds_the_compiled_lengths():
    """Every length compiles its own kernels on a GPU: the fast path rounds lengths to at most 64 values from 1
    to 128k tokens, never by more than 1/8 past 1k, and leaves powers of two alone."""
    g = 128
    lengths = [ha.flex_length(T, g) for T in range(1, 131073)]
    assert len(set(lengths)) <= 64
    assert all(L >= T and L % g == 0 for T, L in enumerate(lengths, start=1))
    assert max((L - T) / T for T, L in enumerate(lengths, start=1) if T >= 1024) <= 1 / 8
    assert all(ha.flex_length(2**e, g) == 2**e for e in range(7, 18))


def test_flex_path_at_its_padded_length_equals_the_reference():
    """257 tokens run at 288: four paragraphs of padding, the last real paragraph completed with zeros. No real
    position may see any of it. (Forward only: FlexAttention has no CPU backward; tests/test_cuda_fast_path.py
    compares the gradients at padded lengths on a GPU.)"""
    from r1_ds.model import R1Config

    c = R1Config.from_preset("tiny")
    kw = dict(
        level_heads=tuple(c.level_heads),
        window=c.local_window,
        paragraph_size=c.paragraph_size,
        document_size=c.document_size,
        top_k=c.route_top_k,
        rope_theta=c.rope_theta,
    )
    T = 257
    assert ha.flex_length(T, c.paragraph_size) - T >= 3 * c.paragraph_size
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, T, c.hidden_size) for _ in range(3))
    ref = ha.hierarchical_attention_eager(q, k, v, q, range(T), **kw)
    fast = ha.hierarchical_attention_flex(q, k, v, **kw)
    for level, (a, b) in enumerate(zip(fast, ref), start=1):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=f"L{level}")


def test_a_static_compiled_function_refuses_the_shape_past_the_recompile_limit(monkeypatch):
    """Past dynamo's limit a compiled function silently runs eager, FlexAttention included (O(T^2)): the call
    that would get there is refused with the reason instead."""
    monkeypatch.setattr(ha, "_static_shapes", {})
    monkeypatch.setattr(ha, "_recompile_limit", lambda: 11)  # 3 signatures allowed
    for T in (128, 256, 384, 128):  # a repeated signature costs nothing
        ha._check_static_shapes("demo", (torch.empty(1, T), True))
    with pytest.raises(RuntimeError, match=r"demo is already compiled for 3 different input shapes"):
        ha._check_static_shapes("demo", (torch.empty(1, 512), True))


def _tiny_kernel_kwargs():
    from r1_ds.model import R1Config

    c = R1Config.from_preset("tiny")
    return c, dict(
        level_heads=tuple(c.level_heads),
        window=c.local_window,
        paragraph_size=c.paragraph_size,
        document_size=c.document_size,
        top_k=c.route_top_k,
        rope_theta=c.rope_theta,
    )


# (history, new queries): a first token, inside the first paragraph, at paragraph and document edges (tiny: g 8,
# G 32), several queries across a paragraph edge, a long history with routing
@pytest.mark.parametrize("T, Tq", [(1, 1), (5, 1), (8, 1), (9, 1), (33, 1), (97, 1), (130, 3), (200, 9), (65, 2)])
def test_decode_path_equals_the_reference(T, Tq):
    """Decoding reads only the keys its queries can see (gathered routed paragraphs, a window slice, the summaries
    in span) where the reference masks all T: the same outputs."""
    c, kw = _tiny_kernel_kwargs()
    torch.manual_seed(T)
    q, k, v = (torch.randn(2, T, c.hidden_size) for _ in range(3))
    ref = ha.hierarchical_attention_eager(q[:, T - Tq :], k, v, q, range(T - Tq, T), **kw)
    out = ha.hierarchical_attention_decode(q[:, T - Tq :], k, v, q, **kw)
    for level, (a, b) in enumerate(zip(out, ref), start=1):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=f"L{level}")


def test_fast_path_generation_equals_the_reference_model():
    """The model's fast path (flex prefill, gathered decoding) generates what the eager reference generates."""
    from r1_ds.model import R1ForCausalLM

    c, _ = _tiny_kernel_kwargs()
    torch.manual_seed(0)
    model = R1ForCausalLM(c).eval()
    ids = torch.randint(0, c.vocab_size, (1, 45))
    runs = {}
    for impl in ("eager", "flex_attention"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            runs[impl] = model.generate(
                ids, max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
    assert torch.equal(runs["eager"].sequences, runs["flex_attention"].sequences)
    for a, b in zip(runs["flex_attention"].logits, runs["eager"].logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
