"""The GPU fast path against the eager reference, on CUDA (skipped without one; `benchmarks/gpu_suite.sh check`
runs this file first on the GPU machine).

The CPU tests hold the flex path's math to the reference through FlexAttention's unfused CPU path, which
applies only the element rule. On a GPU the fused kernels follow the block tables instead (the backward its
query-side tables), and the glue, routing and tables run through inductor. All of that is only checked here.
R1's GPU training stopped learning between commits 78e6f8f and cc68a7a (its loss stayed near ln(vocab), the
gradient norm read 4e7) with every CPU test green: a column-major block table, read by the fused backward as
row-major (tests/test_attention_kernels.py::test_block_tables_are_row_major now guards that on CPU). These
tests are the end-to-end check that was missing.
"""

import math

import pytest
import torch

from r1_ds.model import R1Config, R1ForCausalLM
from r1_ds.model import hierarchical_attention as ha

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused GPU kernels need a CUDA device")

# the GPU presets' attention shape: paragraphs of 128 (one flex tile), window 128, documents of 1024
KW = dict(level_heads=(8, 16, 32), window=128, paragraph_size=128, document_size=1024, top_k=4, rope_theta=1e4)


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def _outputs_and_grads(fn, xs, weight, level):
    """The three level outputs, and the q/k/v gradients of one level's output (so a failure names the level)."""
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    outs = fn(*xs)
    (outs[level].float() * weight).sum().backward()
    return [o.detach().float() for o in outs], [x.grad.float() for x in xs]


# fp32: tight; bf16 against the fp32 reference on the same (rounded) inputs: bf16's own rounding. T = 2500 pads
# to whole paragraphs. Window 384 spans four paragraphs: L1 through flex instead of the banded kernel (the
# window only changes L1).
CASES = [
    (T, dtype, tol, 128, level)
    for T, dtype, tol in ((2048, torch.float32, 2e-4), (2500, torch.float32, 2e-4), (2048, torch.bfloat16, 5e-2))
    for level in (0, 1, 2)
]
CASES.append((2048, torch.float32, 2e-4, 384, 0))


@pytest.mark.parametrize("T, dtype, tol, window, level", CASES)
def test_flex_path_forward_and_backward_equal_the_reference_on_cuda(T, dtype, tol, window, level, monkeypatch):
    _check_flex_path(T, dtype, tol, window, level, monkeypatch)


# each of L1's CUDA kernels inside the whole fast path, whichever is the default (L1's output and every
# gradient; T = 2500 pads); bf16 and fp16: the Triton kernels take no fp32 (their dots would run in TF32), so
# the fp32 cases above run the banded form (flex at window 384) whatever L1_CUDA_KERNEL says
@pytest.mark.parametrize("T, dtype", [(2048, torch.bfloat16), (2500, torch.bfloat16), (2048, torch.float16)])
@pytest.mark.parametrize("kernel", ["triton", "banded"])
def test_flex_path_with_each_l1_kernel_equals_the_reference_on_cuda(kernel, T, dtype, monkeypatch):
    if kernel == "triton":
        pytest.importorskip("triton")
        probe = torch.zeros(1, 2048, 2048, device="cuda", dtype=dtype)
        if not ha._triton_l1_takes(probe, KW["level_heads"][0], 128):
            pytest.skip("the Triton kernels decline this GPU (window_attention_triton.unsupported)")
    monkeypatch.setattr(ha, "L1_CUDA_KERNEL", kernel)
    _check_flex_path(T, dtype, 5e-2, 128, 0, monkeypatch)


def test_triton_l1_gives_way_to_banded_where_shared_memory_is_short(monkeypatch):
    """A GPU with a consumer card's 99 KB of shared memory per block cannot hold the default tiles at head size 256
    (about 100 KB): the fast path runs the banded kernel there instead of failing to compile."""
    pytest.importorskip("triton")
    from r1_ds.model import window_attention_triton as wat

    qr = torch.zeros(1, 2048, 2048, device="cuda", dtype=torch.bfloat16)
    monkeypatch.setattr(wat, "_shared_memory_per_block", lambda index: 232448)  # a Hopper's 227 KB
    assert ha._triton_l1_takes(qr, 8, 128)
    monkeypatch.setattr(wat, "_shared_memory_per_block", lambda index: 166912)  # an A100's 163 KB
    assert ha._triton_l1_takes(qr, 8, 128)
    monkeypatch.setattr(wat, "_shared_memory_per_block", lambda index: 101376)  # 99 KB
    assert "shared memory" in wat.unsupported(qr, 8, 128)
    assert not ha._triton_l1_takes(qr, 8, 128)


def _check_flex_path(T, dtype, tol, window, level, monkeypatch):
    # Routing is discrete: near-uniform random inputs let bf16 rounding pick other paragraphs than fp32 does,
    # which no tolerance should absorb. Both sides route the same way, from fp32 copies of the same inputs.
    route = ha.route_paragraphs
    same_routing = lambda q, k, **kw: route(q.float(), k.float(), **kw)  # noqa: E731
    monkeypatch.setattr(ha, "route_paragraphs", same_routing)
    monkeypatch.setattr(ha, "_route_compiled", same_routing)
    kw = {**KW, "window": window}
    torch.manual_seed(0)
    d = 2048  # the 1.3B width: L1 at head size 256 (Triton or banded), L2 at 128 (flex), L3 at 64
    q, k, v = (torch.randn(1, T, d, device="cuda").to(dtype).float() for _ in range(3))
    weight = torch.randn(1, T, d, device="cuda")
    ref_out, ref_grads = _outputs_and_grads(
        lambda q, k, v: ha.hierarchical_attention_eager(q, k, v, q, range(T), **kw), (q, k, v), weight, level
    )
    out, grads = _outputs_and_grads(
        lambda q, k, v: ha.hierarchical_attention_flex(q, k, v, **kw), [x.to(dtype) for x in (q, k, v)], weight, level
    )
    err = _rel(out[level], ref_out[level])
    assert err < tol, f"L{level + 1} output differs by {err:.2e}"
    for name, a, b in zip("qkv", grads, ref_grads):  # every level reads all three
        assert _rel(a, b) < tol, f"L{level + 1}: d{name} differs by {_rel(a, b):.2e}"


# the presets' head sizes (256 at the 1.3B width, 128 at the 350M width), and a batch of two with q, k, v views of
# one fused projection and a window that is no multiple of the tiles
@pytest.mark.parametrize(
    "B, T, d, window, fused", [(1, 8192, 2048, 128, False), (1, 2048, 1024, 128, False), (2, 2048, 2048, 100, True)]
)
def test_triton_window_kernel_equals_banded_l1_on_cuda(B, T, d, window, fused):
    """The Triton L1 kernels (window_attention_triton.py; benchmarks/profile_attention.py times them) compiled for
    this GPU, in bf16, against the banded L1 kernel in fp32 on the same rounded inputs: forward and q/k/v
    gradients."""
    pytest.importorskip("triton")
    from r1_ds.model import window_attention_triton as wat

    torch.manual_seed(0)
    H, g = KW["level_heads"][0], KW["paragraph_size"]
    why = wat.unsupported(torch.zeros(1, T, d, device="cuda", dtype=torch.bfloat16), H, window)
    if why:
        pytest.skip(f"the Triton kernels decline this GPU: {why}")
    qkv = torch.randn(B, T, 3 * d, device="cuda").bfloat16().float()
    weight = torch.randn(B, T, d, device="cuda")

    def run(fn, dtype):
        leaf = qkv.detach().to(dtype).requires_grad_(True)  # a leaf of its own for each run
        q, k, v = leaf.split(d, dim=-1) if fused else (x.contiguous() for x in leaf.split(d, dim=-1))
        out = fn(q, k, v)
        (out.float() * weight).sum().backward()
        return out.detach().float(), leaf.grad.float().split(d, dim=-1)

    ref, ref_grads = run(
        lambda q, k, v: ha.merge_heads(ha._window_attention_banded(q, k, v, H, window, g)), torch.float32
    )
    out, grads = run(lambda q, k, v: wat.window_attention(q, k, v, H, window), torch.bfloat16)
    assert _rel(out, ref) < 2e-2, f"output differs by {_rel(out, ref):.2e}"
    for name, a, b in zip("qkv", grads, ref_grads):
        assert _rel(a, b) < 2e-2, f"d{name} differs by {_rel(a, b):.2e}"


def test_block_tables_built_on_cuda_equal_the_eager_ones():
    """The tables come out of an inductor graph on GPU (plain torch on CPU); the kernels trust them blindly."""
    torch.manual_seed(0)
    T, H, g = 8192, 16, 128
    q, k = (torch.randn(2, T, 512, device="cuda") for _ in range(2))
    idx, valid, _ = ha._route_compiled(q, k, n_heads=H, paragraph_size=g, top_k=4, first_block=0, n_blocks=T // g)
    args = (T // g, T, g, 1024 // g)
    on_gpu = ha._paragraph_block_tables(idx, valid, *args)
    in_a_graph = torch.compile(ha._paragraph_block_tables, dynamic=False)(idx, valid, *args)  # as in compiled blocks
    eager = ha._paragraph_block_tables(idx.cpu(), valid.cpu(), *args)  # CPU: plain torch
    for i, (a, b, c) in enumerate(zip(on_gpu, in_a_graph, eager)):
        assert torch.equal(a.cpu(), c), f"table {i} differs"
        assert torch.equal(b.cpu(), c), f"table {i} differs when traced into a graph"


def test_l2_kernel_on_cuda_equals_dense_attention_and_flex_own_query_tables():
    """L2 alone, to tell a table fault from a kernel fault: the fused kernel with our BlockMask against the same
    kernel with the query-side tables FlexAttention derives itself (from_kv_blocks), and both against dense
    masked attention under the same element rule, forward and all three gradients, in fp32."""
    from torch.nn.attention.flex_attention import BlockMask, create_mask

    torch.manual_seed(0)
    T, d, g, H = 4096, 2048, KW["paragraph_size"], KW["level_heads"][1]
    q, k, v = (torch.randn(1, T, d, device="cuda") for _ in range(3))
    qr, _, _, kbuf, vbuf, _, _, _ = ha.flex_operands(
        q,
        k,
        v,
        level_heads=KW["level_heads"],
        paragraph_size=g,
        document_size=KW["document_size"],
        rope_theta=KW["rope_theta"],
    )
    idx, valid, _ = ha._route_compiled(
        q, k, n_heads=H, paragraph_size=g, top_k=KW["top_k"], first_block=0, n_blocks=T // g
    )
    ours = ha.paragraph_block_mask(idx, valid, n_par=T // g, length=T, paragraph_size=g, span=KW["document_size"] // g)
    theirs = BlockMask.from_kv_blocks(
        ours.kv_num_blocks,
        ours.kv_indices,
        ours.full_kv_num_blocks,
        ours.full_kv_indices,
        BLOCK_SIZE=g,
        mask_mod=ours.mask_mod,
        seq_lengths=ours.seq_lengths,
    )
    xs = [ha.split_heads(x, H).detach() for x in (qr, kbuf, vbuf)]
    weight = torch.randn_like(xs[0])
    scale = (d // H) ** -0.5

    def run(fn):
        leaves = [x.clone().requires_grad_(True) for x in xs]
        out = fn(*leaves)
        (out * weight).sum().backward()
        return [out.detach()] + [x.grad for x in leaves]

    # the whole element rule (on CUDA the block mask carries the summary rule alone: its partial blocks' rule)
    routed = ha._paragraph_block_tables(idx, valid, T // g, T, g, KW["document_size"] // g)[-1]
    rule = ha.l2_element_rule(routed, n_par=T // g, paragraph_size=g, span=KW["document_size"] // g)
    dense_mask = create_mask(rule, 1, H, T, kbuf.shape[1], device="cuda")

    def dense(q_, k_, v_):
        s_ = (q_ @ k_.transpose(-1, -2)) * scale
        return torch.softmax(s_.masked_fill(~dense_mask, float("-inf")), -1) @ v_

    ref = run(dense)
    with_ours, with_theirs = run(lambda *a: ha._flex(*a, ours, scale)), run(lambda *a: ha._flex(*a, theirs, scale))
    for name, a, b, r in zip(("output", "dq", "dk", "dv"), with_ours, with_theirs, ref):
        assert _rel(b, r) < 2e-4, f"{name}: flex with its own query tables differs from dense by {_rel(b, r):.2e}"
        assert _rel(a, r) < 2e-4, f"{name}: flex with our query tables differs from dense by {_rel(a, r):.2e}"


# Whole-model comparisons: two numerically different paths feed layer 2 inputs that differ in the last bits,
# and routing is discrete, so a near-tie may route one (head, paragraph) differently. That costs up to ~1e-2
# of a gradient; the faults these tests exist for cost orders of magnitude (cc68a7a: gradient norm 4e7).
MODEL_TOL = 2e-2


def _small_model(seed=0) -> R1ForCausalLM:
    torch.manual_seed(seed)
    config = R1Config.from_preset("125m", num_hidden_layers=2, vocab_size=4096)
    return R1ForCausalLM(config).cuda().train()


def _assert_gradients_close(model, grads, ref_grads):
    """All gradients as one vector within MODEL_TOL; the message names the parameter that differs most."""
    err = _rel(torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in ref_grads]))
    worst = max(
        (_rel(a, b), name) for (name, _), a, b in zip(model.named_parameters(), grads, ref_grads) if b.norm() > 0
    )
    assert err < MODEL_TOL, f"gradients differ by {err:.2e}; most in {worst[1]} ({worst[0]:.2e})"


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def test_model_gradients_through_the_fast_path_equal_the_reference_on_cuda():
    model = _small_model()
    ids = torch.randint(0, 4096, (2, 2048), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    model.set_attn_implementation("eager")
    ref_loss, ref_grads = _loss_and_grads(model, ids)
    model.set_attn_implementation("flex_attention")
    loss, grads = _loss_and_grads(model, ids)
    assert abs(loss - ref_loss) < 1e-3 * abs(ref_loss)
    _assert_gradients_close(model, grads, ref_grads)


def test_model_learns_a_batch_in_bf16_through_the_fast_path():
    """What the H200 runs of cc68a7a showed broken: R1 memorises one batch the way any LM does."""
    model = _small_model().to(torch.bfloat16)
    model.set_attn_implementation("flex_attention")
    ids = torch.randint(0, 4096, (4, 1024), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses, norms = [], []
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
        opt.step()
        losses.append(loss.item())
    assert norms[0] < 100, f"first gradient norm {norms[0]:.3g}: something upstream of the loss blows up"
    # cc68a7a: flat loss, gradient norm 4e7. A model that learns drops by several nats here.
    assert losses[-1] < losses[0] - 1.0, f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in 30 steps on one batch"


def _compiled_blocks_equal_eager(ids, before_compiled=lambda: None):
    """The small model with compiled blocks against the same model eager: loss and every gradient.
    before_compiled() runs between the two."""
    from r1_ds.model_setup import compile_blocks

    eager = _small_model()
    eager.set_attn_implementation("flex_attention")
    ref_loss, ref_grads = _loss_and_grads(eager, ids)
    compiled = _small_model()
    compiled.set_attn_implementation("flex_attention")
    assert compile_blocks(compiled) == 2
    before_compiled()
    loss, grads = _loss_and_grads(compiled, ids)
    assert abs(loss - ref_loss) < 1e-3 * abs(ref_loss)
    _assert_gradients_close(compiled, grads, ref_grads)


def test_compiled_blocks_equal_eager_on_cuda():
    _compiled_blocks_equal_eager(
        torch.randint(0, 4096, (2, 2048), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    )


@pytest.mark.parametrize("mode", ha.L2_APART_MODES)
def test_compiled_blocks_with_l2_apart_equal_eager_at_a_long_length_on_cuda(monkeypatch, mode):
    """At 8k tokens compiled blocks run L2 apart from their graphs, behind a graph break or as one opaque op whose
    backward recomputes its forward (hierarchical_attention.L2_APART): either way, loss and gradients equal the
    same model eager."""
    monkeypatch.setattr(ha, "L2_APART", mode)
    calls = []
    attend = ha._paragraph_attention_of  # L2 from its tables: what the op and the break both call at run time

    def counted(*args):
        if not torch.compiler.is_compiling():  # run apart, not traced into a graph
            calls.append(args[0].shape)
        return attend(*args)

    monkeypatch.setattr(ha, "_paragraph_attention_of", counted)
    torch._dynamo.reset()
    ids = torch.randint(0, 4096, (1, 8192), device="cuda", generator=torch.Generator("cuda").manual_seed(5))
    _compiled_blocks_equal_eager(ids, before_compiled=calls.clear)  # the eager model's calls do not count
    assert calls, f"L2 did not run apart ({mode})"


def test_compiled_blocks_train_at_a_long_length_on_cuda():
    """Compiled blocks at the 350M preset's width train at 8k tokens x 2 (bf16, synchronising after every step so a
    fault surfaces here) long enough for the routing, and with it the block tables the fused kernels read without
    bounds checks, to move with the weights; then the loss at the trained weights matches the same model eager.
    At 8k the blocks run L2's FlexAttention apart from their graphs (FLEX_IN_BLOCK_GRAPH_MAX_LEN): inside them,
    the whole 350M model under DeepSpeed faulted in its backward (benchmarks/results/train_throughput.md). This
    case is what lets the trainer's model.compile take 8k (r1_ds.config.COMPILED_FLEX_MAX_SEQ_LEN)."""
    from r1_ds.model_setup import compile_blocks

    torch.manual_seed(0)
    config = R1Config.from_preset("350m", num_hidden_layers=2, vocab_size=4096, max_position_embeddings=8192)
    model = R1ForCausalLM(config).cuda().to(torch.bfloat16).train()
    model.set_attn_implementation("flex_attention")
    assert compile_blocks(model) == 2
    ids = torch.randint(0, 4096, (2, 8192), device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(12):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        torch.cuda.synchronize()
        losses.append(loss.item())
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0], losses
    eager = R1ForCausalLM(config).cuda().to(torch.bfloat16).train()
    eager.set_attn_implementation("flex_attention")
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        compiled_loss, eager_loss = (m(input_ids=ids, labels=ids).loss.item() for m in (model, eager))
    assert abs(compiled_loss - eager_loss) < 2e-2 * abs(eager_loss), (compiled_loss, eager_loss)


# Long sequences: the lengths users run (32k to 128k), where inductor's graphs and the kernels' tiles differ from
# the short cases above. The dense reference cannot hold (T, T) scores there, so it computes chunks of queries
# against the whole history (the same function, q_new a slice), and the fast path's loss weighs those chunks only.
LONG_D = 512  # a small width: L1 heads of 64, L2 of 32, L3 of 16; the shapes of the tables are the GPU presets'


def _chunked_reference_check(T, chunks, tol=2e-4, grads=True):
    torch.manual_seed(T)
    q, k, v = (torch.randn(1, T, LONG_D, device="cuda") for _ in range(3))
    weight = torch.zeros(1, T, LONG_D, device="cuda")
    for lo, hi in chunks:
        weight[:, lo:hi] = torch.randn(1, hi - lo, LONG_D, device="cuda")
    leaves = [x.clone().requires_grad_(grads) for x in (q, k, v)]
    outs = ha.hierarchical_attention_flex(*leaves, **KW)
    assert all(o.shape == (1, T, LONG_D) for o in outs)
    if grads:
        sum(((o * weight) * (i + 1)).sum() for i, o in enumerate(outs)).backward()
    ref_leaves = [x.clone().requires_grad_(grads) for x in (q, k, v)]
    for lo, hi in chunks:
        ref = ha.hierarchical_attention_eager(
            ref_leaves[0][:, lo:hi], ref_leaves[1], ref_leaves[2], ref_leaves[0], range(lo, hi), **KW
        )
        for level, (a, b) in enumerate(zip(outs, ref), start=1):
            err = _rel(a[:, lo:hi].detach(), b.detach())
            assert err < tol, f"T={T}: L{level} output at [{lo}, {hi}) differs by {err:.2e}"
        if grads:
            sum(((o * weight[:, lo:hi]) * (i + 1)).sum() for i, o in enumerate(ref)).backward()
    if grads:
        for name, a, b in zip("qkv", leaves, ref_leaves):
            assert _rel(a.grad, b.grad) < tol, f"T={T}: d{name} differs by {_rel(a.grad, b.grad):.2e}"


@pytest.mark.parametrize("T", [32768, 65536])
def test_long_sequences_equal_the_reference_on_cuda(T):
    """Forward and all three gradients at 32k and 64k tokens, on a chunk at the start, the middle and the end (the
    first paragraphs, and queries that route across tens of thousands of tokens)."""
    _chunked_reference_check(T, [(0, 256), (T // 2 - 100, T // 2 + 156), (T - 256, T)])


def test_lengths_in_any_order_in_one_process_on_cuda():
    """A run whose length changes (progressive stages, evaluation, prompts of any length): every length in one
    process, short after long and back, each through the compiled kernels (an uncompiled FlexAttention would need
    (T, T) scores: out of memory at 128k) and equal to the reference on its last queries."""
    for T in (1000, 65536, 3000, 131072, 8192, 32768, 1024):
        before = len(ha._static_shapes.get("flex_attention", ()))
        _chunked_reference_check(T, [(T - 200, T)], grads=T <= 65536)
        L = ha.flex_length(T, KW["paragraph_size"])
        assert L >= T and before <= len(ha._static_shapes["flex_attention"]), f"T={T}: flex ran uncompiled"
    torch.cuda.synchronize()


def _two_layer_decoder(max_positions: int) -> R1ForCausalLM:
    """The 125m preset's grouping at width 512 and 2 layers, seed 0, on CUDA in eval mode."""
    torch.manual_seed(0)
    config = R1Config.from_preset(
        "125m",
        num_hidden_layers=2,
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1024,
        level_heads=(8, 16, 32),
        max_position_embeddings=max_positions,
    )
    return R1ForCausalLM(config).cuda().eval()


def test_generation_with_prompts_of_several_lengths_on_cuda():
    """Prefill through the fast path (any prompt length), then decoding with the KV cache: the logits equal the
    eager reference's for every prompt length, in one process."""
    model = _two_layer_decoder(max_positions=8192)
    gen = torch.Generator("cuda").manual_seed(5)
    for n in (300, 5000, 1200):
        ids = torch.randint(0, 4096, (1, n), device="cuda", generator=gen)
        with torch.no_grad():
            model.set_attn_implementation("eager")
            ref = model.generate(
                ids, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
            model.set_attn_implementation("flex_attention")
            out = model.generate(
                ids, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
        assert _rel(out.logits[0], ref.logits[0]) < 1e-3, f"prompt {n}: prefill logits differ"
        if torch.equal(out.sequences, ref.sequences):  # same tokens fed back: decode logits must agree too
            for a, b in zip(out.logits, ref.logits):
                assert _rel(a, b) < 1e-3, f"prompt {n}: decode logits differ"


def test_decoding_after_a_long_prompt_equals_the_uncached_forward_on_cuda():
    """A 32k-token prompt through the fast path, then 16 tokens decoded with the KV cache and the decoding state
    beside it, across a paragraph and a document boundary (32,768): every step's logits equal those of one uncached
    forward over the prompt and the tokens generated (held to the eager reference at this length above)."""
    model = _two_layer_decoder(max_positions=40960)
    model.set_attn_implementation("flex_attention")
    n, new = 32760, 16
    ids = torch.randint(0, 4096, (1, n), device="cuda", generator=torch.Generator("cuda").manual_seed(7))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new, do_sample=False, output_logits=True, return_dict_in_generate=True)
        full = model(input_ids=out.sequences[:, :-1], use_cache=False, logits_to_keep=new).logits
    assert len(out.logits) == new
    for i, step in enumerate(out.logits):  # step i predicts position n + i, from the prefill (i = 0) or the cache
        err = _rel(step[0], full[0, i])
        assert err < 1e-3, f"token {n + i}: cached logits differ from the uncached forward by {err:.2e}"
