"""The R1 model as a Hugging Face model: formulas, causality, fast path == reference, caching, I/O."""

import ast
import json
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from r1_ds.model import R1Config, R1ConfigError, R1ForCausalLM, R1ForSequenceClassification, causal_lm_loss
from r1_ds.model.hierarchical_attention import (
    entropy_paths,
    hierarchical_attention_eager,
    hierarchical_attention_flex,
    route_paragraphs,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny(**overrides) -> R1Config:
    # A larger init than the depth-scaled default so that every level contributes visibly.
    return R1Config.from_preset("tiny", **{"init_scheme": "normal", "initializer_range": 0.2, **overrides})


def model(seed=0, **overrides) -> R1ForCausalLM:
    torch.manual_seed(seed)
    return R1ForCausalLM(tiny(**overrides)).eval()


def kernel_kwargs(cfg):
    return dict(
        level_heads=tuple(cfg.level_heads),
        window=cfg.local_window,
        paragraph_size=cfg.paragraph_size,
        document_size=cfg.document_size,
        top_k=cfg.route_top_k,
        rope_theta=cfg.rope_theta,
    )


def test_model_code_knows_nothing_of_deepspeed():
    for path in (ROOT / "r1_ds" / "model").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                assert not name.startswith("deepspeed"), f"{path.name} imports {name}"
                assert not name.startswith("torch.distributed"), f"{path.name} imports {name}"


def test_attn_implementation_is_written_by_its_setter_alone():
    """`set_attn_implementation` checks the name; an assignment to `_attn_implementation` anywhere else in
    the tree would skip the check (an unknown name runs the eager path without a word)."""
    setter = ROOT / "r1_ds" / "model" / "modeling_r1.py"
    inside = set()
    for node in ast.walk(ast.parse(setter.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == "set_attn_implementation":
            inside = set(range(node.lineno, node.end_lineno + 1))
    assert inside, "R1PreTrainedModel.set_attn_implementation is gone"
    writes = []
    for top in ("r1_ds", "data_prep", "benchmarks", "tests"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                    targets = [node.target]
                elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and len(node.args) > 1:
                    targets = [ast.Attribute(attr=getattr(node.args[1], "value", None))]
                else:
                    continue
                for target in targets:
                    if isinstance(target, ast.Attribute) and str(target.attr).startswith("_attn_implementation"):
                        if not (path == setter and node.lineno in inside):
                            writes.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not writes, f"_attn_implementation written outside the setter: {writes}; call model.set_attn_implementation"


@pytest.mark.parametrize("name", ["sdpa", "flash_attention_2", "flex", "paged|eager"])
def test_unknown_attn_implementation_is_an_error(name):
    m = model()
    with pytest.raises(ValueError) as err:
        m.set_attn_implementation(name)
    assert repr(name) in str(err.value) and "eager, flex_attention" in str(err.value) and "Fix:" in str(err.value)
    assert m.config._attn_implementation == "eager"  # unchanged
    with pytest.raises(ValueError, match="is not an R1 attention implementation"):  # at construction too
        R1ForCausalLM(tiny(attn_implementation=name))


def test_attn_implementation_setter_selects_the_kernels():
    m = model()
    assert m.config._attn_implementation == "eager"  # no request: the reference
    m.set_attn_implementation("flex_attention")
    assert m.config._attn_implementation == "flex_attention"
    assert R1ForCausalLM(tiny(attn_implementation="flex_attention")).config._attn_implementation == "flex_attention"


def test_every_level_and_routing_is_causal():
    cfg = tiny()
    T, t = 96, 61  # 12 paragraphs, 3 document groups: every level and routing is active
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, T, cfg.hidden_size) for _ in range(3))
    pos = torch.arange(T)
    base = hierarchical_attention_eager(q, k, v, q, pos, **kernel_kwargs(cfg))
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[:, t + 1 :] = torch.randn_like(x[:, t + 1 :]) * 5
    changed = hierarchical_attention_eager(q2, k2, v2, q2, pos, **kernel_kwargs(cfg))
    for level, (a, b) in enumerate(zip(base, changed), start=1):
        assert torch.equal(a[:, : t + 1], b[:, : t + 1]), f"level {level} output at <= {t} saw the future"
        assert not torch.equal(a[:, t + 1 :], b[:, t + 1 :]), f"level {level} ignores its inputs"
    # The routing decision for every paragraph that contains a position <= t is unchanged too.
    kw = dict(
        n_heads=cfg.level_heads[1],
        paragraph_size=cfg.paragraph_size,
        top_k=cfg.route_top_k,
        first_block=0,
        n_blocks=t // cfg.paragraph_size + 1,
    )
    r1, r2 = route_paragraphs(q, k, **kw), route_paragraphs(q2, k2, **kw)
    assert torch.equal(r1[0] * r1[1], r2[0] * r2[1]) and torch.equal(r1[1], r2[1])


@pytest.mark.parametrize("m", range(1, 9))
def test_routing_takes_only_candidates_where_the_softmax_underflows(m):
    """m equal paths hold all the probability, the other candidates underflow to p = 0 and tie there with the
    non-candidates (future paragraphs); exp(H) = m rounds above m in fp32 for some m (6.0000014 at m = 6), so
    the entropy rule asks for one slot more than there are paths with p > 0. That slot must not read the future."""
    N, K = 64, 8
    scores = torch.full((2, 3, 1, N), -200.0)
    scores[..., :m] = 0.0
    cand = torch.zeros(1, N, dtype=torch.bool)
    cand[0, : N // 2] = True
    top, valid, entropy = entropy_paths(scores, cand, K)
    assert torch.allclose(entropy.exp(), torch.tensor(float(m)), rtol=1e-5)
    if m == 6:  # the premise: the entropy rule alone asks for one path more than have p > 0
        assert torch.ceil(entropy.exp()).eq(7).all()
    assert valid.sum(-1).eq(m).all(), f"m={m}: {valid.sum(-1).flatten().tolist()} slots taken"
    taken = top[valid]
    assert (taken < m).all(), f"m={m}: routed to paths {sorted(set(taken.tolist()) - set(range(m)))} with p = 0"


def test_whole_model_is_causal():
    m = model()
    x = torch.randint(0, m.config.vocab_size, (1, 80))
    y = x.clone()
    y[:, 50:] = torch.randint(0, m.config.vocab_size, (1, 30))
    with torch.no_grad():
        a, b = m(x, use_cache=False).logits, m(y, use_cache=False).logits
    assert torch.allclose(a[:, :50], b[:, :50], atol=0, rtol=0)
    assert not torch.allclose(a[:, 50:], b[:, 50:])


def test_routing_uses_entropy_for_the_number_of_paths():
    torch.manual_seed(0)
    g, H, d = 4, 1, 8
    k = torch.randn(1, 10 * g, d)
    q = torch.zeros(1, 10 * g, d)  # zero router: uniform p over candidates -> exp(H) = candidates
    idx, valid, ent = route_paragraphs(q, k, n_heads=H, paragraph_size=g, top_k=3, first_block=0, n_blocks=10)
    n_cand = torch.arange(10)  # block b has b candidates (paragraphs 0 .. b-1)
    assert valid.sum(-1)[0, 0].tolist() == n_cand.clamp(max=3).tolist()
    assert torch.allclose(ent[0, 0, 1:], torch.log(n_cand[1:].float()), atol=1e-5)
    # A router that points hard at one paragraph: entropy ~ 0 -> exactly one path, the right one.
    k = torch.zeros(1, 10 * g, d)
    k[:, 2 * g : 3 * g] = 50.0
    q = torch.ones(1, 10 * g, d)
    idx, valid, ent = route_paragraphs(q, k, n_heads=H, paragraph_size=g, top_k=3, first_block=9, n_blocks=1)
    assert valid.sum().item() == 1 and idx[0, 0, 0, 0].item() == 2 and ent.item() < 1e-3
    # Every routed paragraph lies strictly before the query paragraph.
    idx, valid, _ = route_paragraphs(
        torch.randn(1, 40, d), torch.randn(1, 40, d), n_heads=2, paragraph_size=g, top_k=3, first_block=0, n_blocks=10
    )
    blocks = torch.arange(10)[None, None, :, None].expand_as(idx)
    assert bool(((idx < blocks) | ~valid).all())


# window 16 over paragraphs of 8: L1 runs banded; window 40: flex
@pytest.mark.parametrize("T, window", [(96, 16), (77, 16), (5, 16), (96, 40)])
def test_flex_fast_path_equals_reference(T, window):
    cfg = tiny(local_window=window)
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, T, cfg.hidden_size) for _ in range(3))
    ref = hierarchical_attention_eager(q, k, v, q, torch.arange(T), **kernel_kwargs(cfg))
    fast = hierarchical_attention_flex(q, k, v, **kernel_kwargs(cfg))
    for level, (a, b) in enumerate(zip(ref, fast), start=1):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=f"level {level}")


def _output_and_grads(block, x):
    """block(x) and the gradients of its sum for x and every parameter; x and the block keep no gradient."""
    out = block(x)
    out.sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad()
    return out, grads


def _compiled_flex_block_matches_eager(monkeypatch, compile_block, before_compiled=lambda: None, **tol):
    """The first decoder block of the tiny model on the FlexAttention path, compiled by compile_block(block),
    against itself eager: output and every gradient, within tol (default 1e-5 / 1e-4). before_compiled() runs
    between the two."""
    import torch.nn.attention.flex_attention as flex

    monkeypatch.setattr(flex, "_validate_device", lambda *a: None, raising=False)  # allow CPU backward (unfused)
    m = model()
    m.set_attn_implementation("flex_attention")
    block = m.model.layers[0].train()
    x = torch.randn(2, 72, m.config.hidden_size, requires_grad=True)
    ref, grads = _output_and_grads(block, x)
    torch._dynamo.reset()
    before_compiled()
    out = compile_block(block)(x)
    out.sum().backward()
    tol = tol or dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, ref, **tol)
    for a, b in zip(grads, [x.grad] + [p.grad for p in block.parameters()]):
        torch.testing.assert_close(b, a, **tol)


def test_flex_decoder_block_compiles_as_one_graph(monkeypatch):
    """`model.compile` on GPU compiles whole decoder blocks; a graph break inside the flex path would split
    each block into pieces and bring back the per-kernel overhead. fullgraph=True fails on any break. The
    aot_eager backend traces the same Python as inductor on GPU; forward and backward must match eager."""
    _compiled_flex_block_matches_eager(
        monkeypatch, lambda block: torch.compile(block, fullgraph=True, backend="aot_eager")
    )


@pytest.mark.parametrize("apart", [None, "op", "break"])
def test_compiled_block_runs_long_paragraph_attention_apart(monkeypatch, apart):
    """Past FLEX_IN_BLOCK_GRAPH_MAX_LEN tokens a compiled block runs L2's block mask and FlexAttention apart (as
    their own compiled graphs): as one opaque op with its own backward, the block one graph; behind a graph break,
    several graphs. Up to it, they are traced into the block's one graph. Every way computes what eager does,
    forward and backward."""
    from r1_ds.model import hierarchical_attention as ha

    monkeypatch.setattr(ha, "FLEX_IN_BLOCK_GRAPH_MAX_LEN", 4096 if apart is None else 64)
    monkeypatch.setattr(ha, "L2_APART", apart or ha.L2_APART)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    def before_compiled():
        if apart == "op":
            # CPU's unfused FlexAttention evaluates mask_mod under vmap, which fails inside an op run by the
            # compiled graph; here the op's inside is dense attention under the same rule (what the unfused path
            # computes). The fused GPU kernels inside it: tests/test_cuda_fast_path.py.
            monkeypatch.setattr(ha, "_flex", _dense_flex)

    tol = dict(atol=5e-5, rtol=1e-3) if apart == "op" else {}  # op: dense inside
    _compiled_flex_block_matches_eager(
        monkeypatch, lambda block: torch.compile(block, backend=backend), before_compiled, **tol
    )
    flex_in_graph = ["flex_attention" in gm.code for gm in graphs]
    op_in_graph = ["paragraph_attention_tables_apart" in gm.code for gm in graphs]
    if apart == "op":
        assert flex_in_graph == [False] and op_in_graph == [True]
    elif apart == "break":  # the break splits each frame on the call stack: several graphs, none with the kernel
        assert len(graphs) > 1 and not any(flex_in_graph) and not any(op_in_graph)
    else:
        assert flex_in_graph == [True] and op_in_graph == [False]
        # the rotary tables come from the opaque op: traced as ops, inductor recomputes cos / sin per element
        assert "rope_grid_table" in graphs[0].code and ".cos()" not in graphs[0].code


def test_paragraph_attention_apart_ops_pass_opcheck(monkeypatch):
    """The L2 op a compiled block runs at long lengths, and its backward: schema, fake (shapes and strides: the
    compiler lays out what reads the outputs by the fake), autograd registration and AOT dispatch, through
    torch.library.opcheck. Dense attention inside (_dense_flex; the fused kernels: tests/test_cuda_fast_path.py)."""
    from r1_ds.model import hierarchical_attention as ha

    monkeypatch.setattr(ha, "_flex", _dense_flex)
    kw = dict(level_heads=(2, 4, 8), paragraph_size=8, document_size=32, rope_theta=10000.0)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 72, 64, generator=gen) for _ in range(3))
    qr, _, _, kbuf, vbuf, _, _, _ = ha.flex_operands(q, k, v, **kw)
    idx, valid, _ = ha.route_paragraphs(q, k, n_heads=4, paragraph_size=8, top_k=4, first_block=0, n_blocks=9)
    sizes = (4, 9, 8, 4)  # heads, complete paragraphs, paragraph size, span
    leaves = [x.detach().requires_grad_(True) for x in (qr, kbuf, vbuf)]
    torch.library.opcheck(ha.paragraph_attention_tables_apart, (*leaves, idx, valid, *sizes))
    out, *tables = ha.paragraph_attention_tables_apart(*leaves, idx, valid, *sizes)
    for a, b in zip(tables, ha._paragraph_block_tables(idx, valid, 9, 72, 8, 4)):
        assert torch.equal(a, b)
    grad = torch.randn(qr.shape, generator=gen)
    torch.library.opcheck(ha.paragraph_attention_apart_backward, (grad, qr, kbuf, vbuf, tables, *sizes))
    # the op's output and its backward are L2 and its gradients
    ref = ha._paragraph_attention(*leaves, idx, valid, *sizes)
    torch.testing.assert_close(out, ref)
    ref_grads = torch.autograd.grad(ref, leaves, grad)
    for a, b in zip(ha.paragraph_attention_apart_backward(grad, qr, kbuf, vbuf, tables, *sizes), ref_grads):
        torch.testing.assert_close(a, b)
        assert a.is_contiguous()
    torch.testing.assert_close(
        torch.autograd.grad(ha.paragraph_attention_apart(*leaves, idx, valid, *sizes), leaves, grad), ref_grads
    )


def _dense_flex(q, k, v, block_mask, scale):
    """What CPU's unfused FlexAttention computes (block_mask.mask_mod at every score, in fp32), without its vmap:
    the rule is evaluated on broadcast index grids. Its sums run in another order than the unfused kernel's."""
    B, H, Q, _ = q.shape
    KV = k.shape[2]
    grid = torch.meshgrid(torch.arange(B), torch.arange(H), torch.arange(Q), torch.arange(KV), indexing="ij")
    mask = block_mask.mask_mod(*grid)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    return (torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v.float()).nan_to_num().to(q.dtype)


def _kernel_view(block_mask, B, H, Q, KV, mask_mod=None):
    """The element mask the fused GPU kernel applies: full blocks whole, partial blocks through
    mask_mod (the block mask's own unless given), other blocks skipped. (The CPU path applies mask_mod
    everywhere, so equality with the reference on CPU proves the GPU result only if the block tables
    agree with mask_mod.)"""
    from torch.nn.attention.flex_attention import create_mask

    bq, bk = block_mask.BLOCK_SIZE

    def table(num, idx):
        n_kb = -(-KV // bk)
        t = torch.zeros(*idx.shape[:3], n_kb + 1, dtype=torch.bool)  # last column takes unused slots
        used = torch.arange(idx.shape[-1]) < num[..., None]
        t.scatter_(-1, torch.where(used, idx.long(), n_kb), True)
        return t[..., :n_kb].expand(B, H, -1, -1).repeat_interleave(bq, 2).repeat_interleave(bk, 3)[:, :, :Q, :KV]

    partial = table(block_mask.kv_num_blocks, block_mask.kv_indices)
    full = table(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
    dense = create_mask(block_mask.mask_mod, B, H, Q, KV, device="cpu")
    applied = dense if mask_mod is None else create_mask(mask_mod, B, H, Q, KV, device="cpu")
    return full | (partial & applied), dense, full & ~dense


def _random_l2_mask(B: int, T: int, g: int, span: int, *, n_heads: int):
    """(valid, L2 block mask) of top-3 routing over random q, k (B, T, 32) from seed 0."""
    from r1_ds.model.hierarchical_attention import paragraph_block_mask

    torch.manual_seed(0)
    q, k = torch.randn(B, T, 32), torch.randn(B, T, 32)
    kw = dict(n_heads=n_heads, paragraph_size=g, top_k=3, first_block=0, n_blocks=T // g)
    idx, valid, _ = route_paragraphs(q, k, **kw)
    return valid, paragraph_block_mask(idx, valid, n_par=T // g, length=T, paragraph_size=g, span=span)


@pytest.mark.parametrize("T, window, g", [(96, 16, 8), (64, 24, 8), (128, 8, 16)])
def test_flex_block_tables_agree_with_mask(T, window, g):
    from torch.nn.attention.flex_attention import create_mask

    from r1_ds.model.hierarchical_attention import _window_block_mask, l2_summary_mod

    kernel, dense, wrong_full = _kernel_view(_window_block_mask(T, window, g, "cpu"), 1, 1, T, T)
    assert torch.equal(kernel, dense) and not wrong_full.any()
    B, H, span = 2, 4, 4
    valid, bm = _random_l2_mask(B, T, g, span, n_heads=H)
    assert valid.any()
    KV = bm.seq_lengths[1]
    kernel, dense, wrong_full = _kernel_view(bm, B, H, T, KV)
    assert torch.equal(kernel, dense) and not wrong_full.any()
    # on CUDA the fused kernel gets the summary rule alone: through the same tables, the same mask
    gpu_mod = l2_summary_mod(n_par=T // g, paragraph_size=g, span=span)
    kernel, _, _ = _kernel_view(bm, B, H, T, KV, mask_mod=gpu_mod)
    assert torch.equal(kernel, dense)
    assert not torch.equal(create_mask(gpu_mod, B, H, T, KV, device="cpu"), dense)  # it leaves routed keys out


def test_l2_query_side_tables_are_the_transpose_of_the_key_side():
    """The GPU backward's dK/dV loop follows q_num_blocks / q_indices (the CPU path never reads them), so
    they are checked against FlexAttention's own transposition of the key-side tables."""
    from torch.nn.attention.flex_attention import BlockMask

    g, span, T = 8, 4, 256
    valid, bm = _random_l2_mask(2, T, g, span, n_heads=2)
    ref = BlockMask.from_kv_blocks(
        bm.kv_num_blocks,
        bm.kv_indices,
        bm.full_kv_num_blocks,
        bm.full_kv_indices,
        BLOCK_SIZE=g,
        mask_mod=bm.mask_mod,
        seq_lengths=bm.seq_lengths,
    )

    def used(num, indices):  # the set of listed blocks per row, order aside
        keep = torch.arange(indices.shape[-1]) < num[..., None]
        return torch.where(keep, indices, -1).sort(-1).values

    for ours, theirs in (
        ((bm.q_num_blocks, bm.q_indices), (ref.q_num_blocks, ref.q_indices)),
        ((bm.full_q_num_blocks, bm.full_q_indices), (ref.full_q_num_blocks, ref.full_q_indices)),
    ):
        assert torch.equal(ours[0], theirs[0])
        assert torch.equal(used(*ours), used(*theirs))
    assert int(bm.full_q_num_blocks.sum()) > 0 and int(bm.q_num_blocks.sum()) > 0


def test_each_l2_summary_block_is_read_by_nearby_query_blocks_only():
    """The flex backward runs one dK/dV program per key block, looping over the query blocks that read it.
    Each summary block carries its own null key, so no summary block is read by every query block (a
    shared null would make one program loop over all n / g of them: a serial tail growing with n)."""
    from r1_ds.model.hierarchical_attention import summary_len

    g, span, T = 8, 4, 512
    n_par = T // g
    valid, bm = _random_l2_mask(1, T, g, span, n_heads=2)
    n_sb = summary_len(n_par, g) // g
    readers = bm.q_num_blocks[..., :n_sb]  # query blocks per summary block (summary blocks are partial)
    assert n_sb == 10 and int(readers.max()) <= (g - 1) + span < n_par


def test_model_flex_equals_eager():
    m = model()
    x = torch.randint(0, m.config.vocab_size, (2, 72))
    with torch.no_grad():
        ref = m(x, use_cache=False).logits
        m.set_attn_implementation("flex_attention")
        fast = m(x, use_cache=False).logits
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)


def test_gate_formula():
    m = model()
    attn = m.model.layers[0].self_attn
    x = torch.randn(2, 40, m.config.hidden_size)
    with torch.no_grad():
        h1, h2, h3 = attn.levels(x)
        out, alpha = attn.fuse(h1, h2, h3)
        W, b = attn.gate.weight[:3], attn.gate.bias[:3]  # W_g (3, 3d), b_g (3,): rows 3.. are alignment padding
        expect_alpha = torch.sigmoid(torch.cat([h1, h2, h3], -1) @ W.T + b)
        expect = attn.o_proj(h1 + expect_alpha[..., :1] * h1 + expect_alpha[..., 1:2] * h2 + expect_alpha[..., 2:] * h3)
    torch.testing.assert_close(alpha, expect_alpha)
    torch.testing.assert_close(out, expect)
    assert alpha.shape == (2, 40, 3) and bool(((alpha > 0) & (alpha < 1)).all())
    assert h2.abs().sum() > 0 and h3.abs().sum() > 0  # every level contributes at this length


def test_gate_padding_rows_stay_zero_and_inert():
    m = model()
    gate = m.model.layers[0].self_attn.gate
    assert gate.weight.shape[0] == 8 and bool((gate.weight[3:] == 0).all())
    h = [torch.randn(2, 5, m.config.hidden_size, requires_grad=True) for _ in range(3)]
    gate.bias.data[3:] = 7.0  # whatever the padding holds, the logits ignore it
    logits = gate(*h)
    expect = F.linear(torch.cat(h, -1), gate.weight[:3], gate.bias[:3])
    torch.testing.assert_close(logits, expect)
    torch.testing.assert_close(gate(torch.cat(h, -1)), expect)  # the concatenated (tensor-parallel) form
    # the GPU form (a compiled reduction there; the same function runs eagerly here)
    from r1_ds.model.modeling_r1 import level_gate_logits

    torch.testing.assert_close(level_gate_logits(*h, gate.weight[:3], gate.bias[:3]), expect)
    logits.sum().backward()
    assert bool((gate.weight.grad[3:] == 0).all()) and bool((gate.bias.grad[3:] == 0).all())


@pytest.mark.parametrize("preset", ["tiny", "125m", "350m", "1.3b"])
def test_every_parameter_keeps_flat_buffers_aligned(preset):
    # DeepSpeed packs parameters back to back into flat buffers: a parameter whose size is not a
    # multiple of 8 elements leaves every later one off 16-byte alignment (slow cuBLAS kernels).
    with torch.device("meta"):
        m = R1ForCausalLM(R1Config.from_preset(preset))
    odd = {n: p.numel() for n, p in m.named_parameters() if p.numel() % 8}
    assert not odd


def test_rotary_is_relative_for_every_level_head():
    from r1_ds.model.hierarchical_attention import rope_size, rope_table, rotary, split_heads

    cfg = tiny()
    d, r = cfg.hidden_size, rope_size(cfg.hidden_size, cfg.level_heads)
    assert r == d // max(cfg.level_heads)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, d, dtype=torch.float64), torch.randn(1, 1, d, dtype=torch.float64)

    def scores(pq, pk):
        qr = rotary(q, *[t.double() for t in rope_table(torch.tensor([pq]), r, 1e4)])
        kr = rotary(k, *[t.double() for t in rope_table(torch.tensor([pk]), r, 1e4)])
        return [(split_heads(qr, H) * split_heads(kr, H)).sum(-1) for H in cfg.level_heads]

    for a, b in zip(scores(10.0, 3.0), scores(107.0, 100.0)):  # same offset, other place: same scores
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # the tables are fp32
    assert not torch.allclose(scores(10.0, 3.0)[0], scores(10.0, 4.0)[0])  # another offset: other scores


def test_cached_tables_made_in_inference_mode_can_serve_training():
    from r1_ds.model import hierarchical_attention as ha

    ha._rope_grid.cache_clear()  # an earlier test may have cached these keys outside inference mode
    ha._window_block_mask.cache_clear()
    with torch.inference_mode():  # the first caller (say, an HF pipeline) runs in inference mode
        grid = ha._rope_grid(40, 1, 8, 1e4, "cpu")
        mask = ha._window_block_mask(48, 16, 8, "cpu")
    assert not any(t.is_inference() for t in (*grid, mask.kv_num_blocks, mask.kv_indices))
    x = torch.randn(1, 40, 16, requires_grad=True)
    ha.rotary(x, *grid).sum().backward()  # a training step can save them for backward
    assert x.grad is not None


def test_cached_generation_equals_uncached():
    m = model(seed=3)
    prompt = torch.randint(0, m.config.vocab_size, (2, 37))  # decoding crosses paragraph and document edges
    with torch.no_grad():
        a = m.generate(prompt, max_new_tokens=40, do_sample=False, use_cache=True, pad_token_id=0)
        b = m.generate(prompt, max_new_tokens=40, do_sample=False, use_cache=False, pad_token_id=0)
    assert a.shape == (2, 77)
    assert torch.equal(a, b)


def test_label_smoothing_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(2, 9, 31)
    labels = torch.randint(0, 31, (2, 9))
    labels[0, 3] = -100
    ours = causal_lm_loss(logits, labels, 0.1)
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, 31), labels[:, 1:].reshape(-1), label_smoothing=0.1, ignore_index=-100
    )
    torch.testing.assert_close(ours, ref)
    m = model(label_smoothing=0.1)  # a training setting; the default is plain cross entropy
    x = torch.randint(0, m.config.vocab_size, (2, 20))
    out = m(x, labels=x, use_cache=False)
    torch.testing.assert_close(out.loss, causal_lm_loss(out.logits, x, m.config.label_smoothing))
    assert m.config.label_smoothing == 0.1


def test_depth_scaled_init_variances():
    torch.manual_seed(0)
    cfg = R1Config(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=6,
        level_heads=(4, 8, 16),
        vocab_size=128,
        local_window=16,
        paragraph_size=8,
        document_size=32,
        max_position_embeddings=64,
    )
    m = R1ForCausalLM(cfg)
    for depth, layer in enumerate(m.model.layers, start=1):
        for lin in (layer.self_attn.q_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            expected = 1.0 / (lin.in_features * 2**depth)
            measured = lin.weight.float().var().item()
            assert abs(measured / expected - 1) < 0.05, (depth, lin, measured, expected)
    normal = R1ForCausalLM(R1Config(**{**cfg.to_diff_dict(), "init_scheme": "normal", "initializer_range": 0.02}))
    for layer in normal.model.layers:
        assert abs(layer.mlp.up_proj.weight.std().item() / 0.02 - 1) < 0.05


def test_drop_path_schedule_and_eval():
    m = model()
    m.set_drop_path_rate(0.4)
    rates = [layer.drop_path.rate for layer in m.model.layers]
    assert rates == pytest.approx([0.2, 0.4])
    x = torch.randint(0, m.config.vocab_size, (1, 20))
    with torch.no_grad():
        a, b = m(x, use_cache=False).logits, m(x, use_cache=False).logits
    assert torch.equal(a, b)  # eval: off
    dp = m.model.layers[1].drop_path
    dp.train()
    y = dp(torch.ones(4000, 1, 1))
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.6) < 0.05 and torch.allclose(y[y != 0], torch.tensor(1 / 0.6))
    with pytest.raises(ValueError, match="drop path rate"):
        m.set_drop_path_rate(1.5)


def test_save_load_round_trip(tmp_path):
    m = model()
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "r1_ds" and "AutoModelForCausalLM" in cfg["auto_map"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, R1ForCausalLM) and isinstance(AutoConfig.from_pretrained(tmp_path), R1Config)
    x = torch.randint(0, m.config.vocab_size, (1, 50))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, m(x).logits, atol=0, rtol=0)
        torch.save({"x": x, "logits": m(x).logits}, tmp_path / "logits.pt")
    # A fresh process that never imports r1_ds loads it through the copied code (trust_remote_code).
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()\n"
        "assert 'r1_ds' not in sys.modules, 'r1_ds was imported'\n"
        f"d = torch.load({str(tmp_path / 'logits.pt')!r})\n"
        "with torch.no_grad(): out = m(d['x']).logits\n"
        "print(type(m).__module__, (out - d['logits']).abs().max().item())\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    module, diff = res.stdout.split()[-2:]
    assert "transformers_modules" in module and float(diff) == 0.0


def test_sequence_classification_head():
    torch.manual_seed(0)
    m = R1ForSequenceClassification(tiny(num_labels=3, pad_token_id=0)).eval()
    x = torch.randint(1, m.config.vocab_size, (2, 12))
    mask = torch.ones_like(x)
    mask[1, 8:] = 0
    x[1, 8:] = 0
    out = m(x, attention_mask=mask, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0
    alone = m(x[1:, :8]).logits  # right padding does not change the pooled token
    torch.testing.assert_close(out.logits[1:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides, field, shown",
    [
        (dict(level_heads=(3, 4, 8)), "level_heads", "[3, 4, 8]"),
        (dict(level_heads=(2, 4, 16)), "level_heads", "[2, 4, 16]"),  # head size 4: too few rotary frequencies
        (dict(document_size=20), "document_size", "20"),
        (dict(paragraph_size=1, document_size=32), "paragraph_size", "1"),
        (dict(local_window=512), "local_window", "512"),
        (dict(route_top_k=-1), "route_top_k", "-1"),
        (dict(init_scheme="xavier"), "init_scheme", "'xavier'"),
        (dict(label_smoothing=1.0), "label_smoothing", "1.0"),
    ],
)
def test_config_validation_names_field_value_rule(overrides, field, shown):
    with pytest.raises(R1ConfigError) as err:
        R1Config.from_preset("tiny", **overrides)
    msg = str(err.value)
    assert f"R1Config.{field}={shown}:" in msg and "must" in msg and "Fix:" in msg, msg


def test_unknown_preset():
    with pytest.raises(R1ConfigError, match="unknown"):
        R1Config.from_preset("7b")


def test_presets_have_their_sizes():
    from r1_ds.model.configuration_r1 import PRESETS

    expected = {"125m": 124e6, "350m": 360e6, "1.3b": 1.32e9}
    for name, target in expected.items():
        c = R1Config.from_preset(name)
        d, L, V, inter = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
        n = V * d + L * (4 * d * d + 3 * d * 3 + 3 + 3 * d * inter + 2 * d) + d
        assert abs(n / target - 1) < 0.05, (name, n)
    assert set(PRESETS) >= {"tiny", "125m", "350m", "1.3b"}
    m = R1ForCausalLM(R1Config.from_preset("tiny", tie_word_embeddings=True))
    c = m.config
    # per layer: q, k, v, o; the level gate (3d -> 3, stored as 3d -> 8); SwiGLU; two norms
    formula = (
        c.vocab_size * c.hidden_size
        + c.num_hidden_layers
        * (
            4 * c.hidden_size**2
            + 8 * 3 * c.hidden_size
            + 8
            + 3 * c.hidden_size * c.intermediate_size
            + 2 * c.hidden_size
        )
        + c.hidden_size
    )
    assert sum(p.numel() for p in m.parameters()) == formula
