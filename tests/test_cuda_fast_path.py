"""The GPU fast path against the eager reference, on CUDA (skipped without one; `benchmarks/gpu_suite.sh check`
runs this file first on the GPU machine).

The CPU tests hold the flex path's math to the reference through FlexAttention's unfused CPU path, which
applies only the element rule. On a GPU the fused kernels follow the block tables instead (the backward its
query-side tables), and the glue, routing and tables run through inductor. All of that is only checked here.
R1's GPU training stopped learning between commits 78e6f8f and cc68a7a (its loss stayed at ln(vocab), the
gradient norm read 4e7) with every CPU test green; these tests are the check that was missing.
"""

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


def _outputs_and_grads(fn, xs, weights):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    outs = fn(*xs)
    sum((o.float() * w).sum() for o, w in zip(outs, weights)).backward()
    return [o.detach().float() for o in outs], [x.grad.float() for x in xs]


# fp32: tight; bf16 against the fp32 reference: bf16's own rounding. T = 2500 pads to whole paragraphs.
@pytest.mark.parametrize("T, dtype, tol", [(2048, torch.float32, 2e-4), (2500, torch.float32, 2e-4),
                                           (2048, torch.bfloat16, 5e-2)])
def test_flex_path_forward_and_backward_equal_the_reference_on_cuda(T, dtype, tol):
    torch.manual_seed(0)
    d = 2048  # the 1.3B width: L1 at head size 256 (banded), L2 at 128 (flex), L3 at 64
    q, k, v = (torch.randn(1, T, d, device="cuda") for _ in range(3))
    weights = [torch.randn(1, T, d, device="cuda") for _ in range(3)]
    ref_out, ref_grads = _outputs_and_grads(
        lambda q, k, v: ha.hierarchical_attention_eager(q, k, v, q, range(T), **KW), (q, k, v), weights)
    out, grads = _outputs_and_grads(lambda q, k, v: ha.hierarchical_attention_flex(q, k, v, **KW),
                                    [x.to(dtype) for x in (q, k, v)], weights)
    for level, (a, b) in enumerate(zip(out, ref_out), start=1):
        assert _rel(a, b) < tol, f"level {level} output differs by {_rel(a, b):.2e}"
    for name, a, b in zip("qkv", grads, ref_grads):
        assert _rel(a, b) < tol, f"d{name} differs by {_rel(a, b):.2e}"


def test_block_tables_built_on_cuda_equal_the_eager_ones():
    """The tables come out of an inductor graph on GPU (plain torch on CPU); the kernels trust them blindly."""
    torch.manual_seed(0)
    T, H, g = 8192, 16, 128
    q, k = (torch.randn(2, T, 512, device="cuda") for _ in range(2))
    idx, valid, _ = ha._route_compiled(q, k, n_heads=H, paragraph_size=g, top_k=4, first_block=0, n_blocks=T // g)
    args = (T // g, T, g, 1024 // g)
    on_gpu = ha._paragraph_block_tables(idx, valid, *args)
    eager = ha._paragraph_block_tables.__wrapped__(idx.cpu(), valid.cpu(), *args)
    for i, (a, b) in enumerate(zip(on_gpu, eager)):
        assert torch.equal(a.cpu(), b), f"table {i} differs"


def _small_model(seed=0) -> R1ForCausalLM:
    torch.manual_seed(seed)
    config = R1Config.from_preset("125m", num_hidden_layers=2, vocab_size=4096)
    return R1ForCausalLM(config).cuda().train()


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def test_model_gradients_through_the_fast_path_equal_the_reference_on_cuda():
    model = _small_model()
    ids = torch.randint(0, 4096, (2, 2048), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    model.config._attn_implementation = "eager"
    ref_loss, ref_grads = _loss_and_grads(model, ids)
    model.config._attn_implementation = "flex_attention"
    loss, grads = _loss_and_grads(model, ids)
    assert abs(loss - ref_loss) < 1e-4 * abs(ref_loss)
    worst = max((_rel(a, b), name) for (name, _), a, b in zip(model.named_parameters(), grads, ref_grads)
                if b.norm() > 0)
    assert worst[0] < 1e-3, f"gradient of {worst[1]} differs by {worst[0]:.2e}"


def test_model_learns_a_batch_in_bf16_through_the_fast_path():
    """What the H200 runs of cc68a7a showed broken: R1 memorises one batch the way any LM does."""
    model = _small_model().to(torch.bfloat16)
    model.config._attn_implementation = "flex_attention"
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
    assert losses[-1] < 0.6 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in 30 steps on one batch"


def test_compiled_blocks_equal_eager_on_cuda():
    from r1_ds.train import compile_blocks

    ids = torch.randint(0, 4096, (2, 2048), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    eager = _small_model()
    eager.config._attn_implementation = "flex_attention"
    ref_loss, ref_grads = _loss_and_grads(eager, ids)
    compiled = _small_model()
    compiled.config._attn_implementation = "flex_attention"
    assert compile_blocks(compiled) == 2
    loss, grads = _loss_and_grads(compiled, ids)
    assert abs(loss - ref_loss) < 1e-4 * abs(ref_loss)
    worst = max(_rel(a, b) for a, b in zip(grads, ref_grads) if b.norm() > 0)
    assert worst < 1e-3, f"a gradient differs by {worst:.2e}"
