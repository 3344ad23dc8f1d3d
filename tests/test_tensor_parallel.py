"""Tensor parallelism: the sharded model equals the one-process model (loss, gradients, weights after
training steps), shards merge back exactly, replicated parameters stay identical across tensor ranks.

Layers of tests: pure functions (slicing, per-head kernels, checks, checkpoint patterns) in this
process; then gloo ranks on CPU: tensor 2 with plain torch.optim, tensor 2 x data 2 under a DeepSpeed
engine, and (with the pipeline) pipe 2 x tensor 2 and pipe 2 x tensor 2 x data 2.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from r1_ds.local_ranks import run_distributed
from r1_ds.model import R1Config, R1ForCausalLM
from r1_ds.model.hierarchical_attention import hierarchical_attention_eager, route_paragraphs
from r1_ds.parallel.state_dict_mapping import (
    merge_tensor_parallel_state_dicts,
    shard_state_dict,
    universal_checkpoint_info,
)
from r1_ds.parallel.tensor_parallel import STYLES, apply_tensor_parallel
from r1_ds.parallel.topology import TensorParallelError, check_tensor_parallel
from r1_ds.parallel.tp_layers import merge_shards, shard_tensor
from r1_ds.parallel.tp_plan import R1_TP_PLAN, STYLE_SHARDING, param_sharding

T = 96  # 12 paragraphs, 3 document groups of the tiny preset: every level and routing is active
LR = 1e-2


def tiny(**overrides) -> R1Config:
    # A larger init than the depth-scaled default so that every level and the gate matter.
    return R1Config.from_preset("tiny", **{"init_scheme": "normal", "initializer_range": 0.2, **overrides})


def full_model(seed: int = 0, **overrides) -> R1ForCausalLM:
    torch.manual_seed(seed)
    return R1ForCausalLM(tiny(**overrides))


def batch(step: int, rows: int = 2, vocab: int = 512, ignore: bool = True):
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, vocab, (rows, T), generator=g)
    labels = ids.clone()
    if ignore:
        labels[:, ::7] = -100  # ignored targets count in neither the loss nor its mean
    return ids, labels


# ----------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("stride", [1, 3])
def test_shard_and_merge_are_inverse(stride):
    full = torch.randn(6, 24)
    for dim in (0, 1):
        if full.shape[dim] % (2 * stride):
            continue
        shards = [shard_tensor(full, dim, r, 2, stride) for r in range(2)]
        assert torch.equal(merge_shards(shards, dim, stride), full)
    # stride 3: each rank holds its part of every block (the gate's [h1; h2; h3] columns)
    if stride == 3:
        cols = torch.arange(24.0).expand(2, 24)
        assert shard_tensor(cols, 1, 1, 2, 3)[0].tolist() == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]


def test_each_rank_s_heads_equal_the_full_model_s_heads():
    """Column slice r of q/k/v, viewed with H_l / tp heads per level, gives column slice r of each level's
    output, routing included: heads are independent, so each rank routes its own heads."""
    cfg = tiny()
    tp = 2
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, T, cfg.hidden_size) for _ in range(3))
    pos = torch.arange(T)
    kw = dict(
        window=cfg.local_window,
        paragraph_size=cfg.paragraph_size,
        document_size=cfg.document_size,
        top_k=cfg.route_top_k,
        rope_theta=cfg.rope_theta,
    )
    full = hierarchical_attention_eager(q, k, v, q, pos, level_heads=tuple(cfg.level_heads), **kw)
    H2 = cfg.level_heads[1]
    idx_full, valid_full, ent_full = route_paragraphs(
        q, k, n_heads=H2, paragraph_size=cfg.paragraph_size, top_k=cfg.route_top_k, first_block=0, n_blocks=T // 8
    )
    assert valid_full.sum(-1).float().mean() > 1  # routing really picks several paragraphs here
    w = cfg.hidden_size // tp
    for r in range(tp):
        cols = slice(r * w, (r + 1) * w)
        local_heads = tuple(h // tp for h in cfg.level_heads)
        local = hierarchical_attention_eager(
            q[..., cols], k[..., cols], v[..., cols], q[..., cols], pos, level_heads=local_heads, **kw
        )
        for lvl, (a, b) in enumerate(zip(full, local), start=1):
            torch.testing.assert_close(b, a[..., cols], msg=f"level {lvl}, rank {r}")
        idx, valid, ent = route_paragraphs(
            q[..., cols],
            k[..., cols],
            n_heads=H2 // tp,
            paragraph_size=cfg.paragraph_size,
            top_k=cfg.route_top_k,
            first_block=0,
            n_blocks=T // 8,
        )
        heads = slice(r * H2 // tp, (r + 1) * H2 // tp)
        assert torch.equal(valid, valid_full[:, heads])
        assert torch.equal(idx[valid], idx_full[:, heads][valid_full[:, heads]])
        torch.testing.assert_close(ent, ent_full[:, heads])


def test_tensor_size_checks_name_the_rule_and_the_fix():
    cfg = tiny()  # level_heads (2, 4, 8), intermediate 176, vocab 512
    check_tensor_parallel(tensor=2, level_heads=cfg.level_heads, hidden_size=64, intermediate_size=176, vocab_size=512)
    with pytest.raises(
        TensorParallelError,
        match=r"(?s)level 1 has 2 heads .*not divisible by tensor=4.*Fix: use a "
        r"tensor size in \[1, 2\]",
    ):
        check_tensor_parallel(
            tensor=4, level_heads=cfg.level_heads, hidden_size=64, intermediate_size=176, vocab_size=512
        )
    with pytest.raises(TensorParallelError, match=r"(?s)vocab_size=511 is not divisible by tensor=2.*pad it"):
        check_tensor_parallel(tensor=2, level_heads=(2, 4, 8), hidden_size=64, intermediate_size=176, vocab_size=511)
    with pytest.raises(TensorParallelError, match=r"intermediate_size=175"):
        check_tensor_parallel(tensor=2, level_heads=(2, 4, 8), hidden_size=64, intermediate_size=175, vocab_size=512)
    with pytest.raises(TensorParallelError, match=r"must be an integer >= 1"):
        check_tensor_parallel(tensor=0, level_heads=(2, 4, 8), hidden_size=64, intermediate_size=176, vocab_size=512)
    with pytest.raises(TensorParallelError, match="unknown style 'diagonal'"):
        apply_tensor_parallel(full_model(), None, {"lm_head": "diagonal"})
    with pytest.raises(TensorParallelError, match="needs a Linear, found R1RMSNorm"):
        apply_tensor_parallel(full_model(), None, {"model.norm": "colwise"})


def test_plan_covers_the_model_and_tensor_1_is_the_reference():
    """In one process (no group) the wiring must be the identity: same loss and gradients."""
    ref = full_model()
    model = copy.deepcopy(ref)
    applied = apply_tensor_parallel(model, None)
    hit = {re.sub(r"\.\d+(\.|$)", r".*\1", name) for name in applied}
    assert hit == set(R1_TP_PLAN), f"plan entries that matched nothing: {set(R1_TP_PLAN) - hit}"
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied: one parameter
    ids, labels = batch(0)
    a, b = ref(ids, labels=labels).loss, model(ids, labels=labels).loss
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    a.backward()
    b.backward()
    got = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(got[name].grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_every_plan_style_has_an_apply_function_and_a_sharding_entry():
    assert set(STYLES) == set(STYLE_SHARDING)
    assert set(R1_TP_PLAN.values()) <= set(STYLE_SHARDING)


def test_parameter_sharding_of_every_kind():
    assert param_sharding("model.layers.1.self_attn.q_proj.weight") == (0, 1)
    assert param_sharding("model.layers.1.self_attn.o_proj.weight") == (1, 1)
    assert param_sharding("model.layers.1.self_attn.gate.weight") == (1, 3)
    assert param_sharding("model.layers.1.self_attn.gate.bias") is None
    assert param_sharding("model.layers.1.mlp.down_proj.weight") == (1, 1)
    assert param_sharding("model.embed_tokens.weight") == (0, 1)
    assert param_sharding("lm_head.weight") == (0, 1)
    assert param_sharding("model.norm.weight") is None
    assert param_sharding("weight", prefix="model.layers.0.input_layernorm") is None


@pytest.mark.parametrize("pipeline", [False, True])
def test_universal_checkpoint_patterns_classify_every_parameter_once(pipeline):
    """Every parameter DeepSpeed will name falls in exactly the pattern list that merges it right:
    replicated, row-parallel (dim 1), the gate's 3 sub-parameters, or the default (dim 0; vocab)."""
    from deepspeed.checkpoint import constants as C

    cfg = tiny()
    info = universal_checkpoint_info(cfg, 2, pipeline=pipeline)
    lists = {
        "replicated": info[C.TP_REPLICATED_PARAMETER_PATTERNS],
        "row": info[C.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS],
        "sub": [p for s in info[C.PARAMETER_WITH_SUB_PARAMS] for p in s["patterns"]],
        "vocab": info[C.VOCABULARY_PARAMETER_PATTERNS],
    }
    hf_names = [n for n, _ in full_model().named_parameters()]
    if pipeline:
        from r1_ds.parallel.state_dict_mapping import pipe_layer_prefixes

        names = {}
        for idx, prefix in enumerate(pipe_layer_prefixes(cfg)):
            for hf in [n for n in hf_names if prefix and n.startswith(prefix)]:
                names[hf] = f"{idx}.{hf[len(prefix) :]}"
        names["model.embed_tokens.weight"] = "tied_modules.embed.weight"
    else:
        names = {n: n for n in hf_names}
    want = {(0, 1): set(), (1, 1): {"row"}, (1, 3): {"sub"}, None: {"replicated"}}
    used = set()
    for hf, ds in names.items():
        kinds = {kind for kind, pats in lists.items() for p in pats if re.match(p, ds)}
        used |= {p for pats in lists.values() for p in pats if re.match(p, ds)}
        expected = want[param_sharding(hf)] | ({"vocab"} if "embed_tokens" in hf or "lm_head" in hf else set())
        assert kinds == expected, f"{ds} ({hf}) matched {kinds}, expected {expected}"
    assert used == {p for pats in lists.values() for p in pats}, "a pattern matches no parameter (strict mode fails)"
    (gate,) = info[C.PARAMETER_WITH_SUB_PARAMS]
    assert gate["shape"] == (8, (64, 64, 64)) and gate["partition_dim"] == 1  # the gate: 8 stored rows
    assert info[C.SUB_PARAM_SHARD_WIDTHS][gate["patterns"][0]] == [[32, 32]] * 3


# ----------------------------------------------------------------------------- tensor 2, plain torch


def _tp_plain_body(steps: int):
    """Each rank trains the reference model and its sharded copy side by side (plain torch.optim)."""
    import torch.distributed as dist

    from r1_ds.parallel.tp_layers import vocab_parallel_cross_entropy

    group = dist.new_group(list(range(dist.get_world_size())))
    rank = dist.get_rank(group)
    out = {}

    # the vocabulary-parallel cross entropy alone, against torch, with large logits and ignored targets
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(20, 512, generator=g) * 30).requires_grad_()
    target = torch.randint(0, 512, (20,), generator=g)
    target[3] = -100
    want = F.cross_entropy(logits, target, label_smoothing=0.1, reduction="none")
    (want * torch.arange(20.0)).sum().backward()
    local = logits.detach()[:, rank * 256 : (rank + 1) * 256].clone().requires_grad_()
    got = vocab_parallel_cross_entropy(
        local, target, vocab_start=rank * 256, vocab_size=512, group=group, label_smoothing=0.1
    )
    (got * torch.arange(20.0)).sum().backward()
    out["ce"] = (got.detach(), want.detach(), local.grad, logits.grad[:, rank * 256 : (rank + 1) * 256])

    ref = full_model()
    model = copy.deepcopy(ref)
    apply_tensor_parallel(model, group)
    out["init"] = {k: v.clone() for k, v in model.state_dict().items()}
    # SGD with momentum: linear in the gradients, so the weights check stays sharp (Adam's m / sqrt(v)
    # amplifies rounding noise on near-zero gradients; the DeepSpeed test below uses Adam)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses, ref_losses = [], []
    for step in range(steps):
        ids, labels = batch(step)
        for m, o, acc in ((ref, opt_ref, ref_losses), (model, opt, losses)):
            o.zero_grad()
            loss = m(ids, labels=labels).loss
            loss.backward()
            acc.append(loss.item())
        if step == 0:
            out["grads"] = {n: p.grad.clone() for n, p in model.named_parameters()}
            out["ref_grads"] = {n: p.grad.clone() for n, p in ref.named_parameters()}
        opt_ref.step()
        opt.step()
    out.update(
        losses=losses,
        ref_losses=ref_losses,
        final=model.state_dict(),
        ref_final=ref.state_dict(),
        ref_init=full_model().state_dict(),
    )
    return out


def _assert_full_equal(merged: dict, ref: dict, *, atol: float, what: str):
    assert set(merged) == set(ref)
    for k in ref:
        torch.testing.assert_close(merged[k], ref[k], rtol=0, atol=atol, msg=f"{what}: {k}")


def _assert_replicated_identical(state_dicts: list[dict], what: str) -> int:
    replicated = [k for k in state_dicts[0] if param_sharding(k) is None]
    for k in replicated:
        for r, sd in enumerate(state_dicts[1:], start=1):
            assert torch.equal(sd[k], state_dicts[0][k]), f"{what}: replicated {k} differs on tensor rank {r}"
    return len(replicated)


@pytest.mark.slow
def test_tensor_2_equals_one_process_model():
    steps = 3
    r0, r1 = run_distributed(_tp_plain_body, 2, steps)
    for r in (r0, r1):
        got, want, grad_local, grad_want = r["ce"]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_local, grad_want, rtol=1e-5, atol=1e-6)
        assert got[3] == 0 and grad_local[3].abs().max() == 0  # ignored target
        for a, b in zip(r["losses"], r["ref_losses"]):
            assert abs(a - b) < 1e-5, (r["losses"], r["ref_losses"])
    assert r0["losses"] == r1["losses"]  # the loss is replicated, bit for bit

    # the shards are exact slices of the full model, and merge back exactly
    merged = merge_tensor_parallel_state_dicts([r0["init"], r1["init"]])
    ref_init = r0["ref_init"]
    assert all(torch.equal(merged[k], ref_init[k]) for k in ref_init)
    for rank, r in enumerate((r0, r1)):
        sliced = shard_state_dict(ref_init, rank, 2)
        assert all(torch.equal(sliced[k], r["init"][k]) for k in sliced)
    assert r0["init"]["model.layers.0.self_attn.gate.weight"].shape == (
        8,
        96,
    )  # 3 gate rows + 5 alignment rows, the input split

    _assert_full_equal(
        merge_tensor_parallel_state_dicts([r0["grads"], r1["grads"]]),
        r0["ref_grads"],
        atol=2e-5,
        what="gradients of step 1",
    )
    final = merge_tensor_parallel_state_dicts([r0["final"], r1["final"]])
    _assert_full_equal(final, r0["ref_final"], atol=1e-5, what=f"weights after {steps} SGD steps")
    moved = {k: (final[k] - ref_init[k]).abs().max().item() for k in ref_init}
    assert min(moved.values()) > 1e-3, moved  # every parameter, replicated ones included, was trained
    # replicated: 2 norms and the gate bias per layer, and the final norm
    assert _assert_replicated_identical([r0["final"], r1["final"]], "after training") == 2 * 3 + 1


# ----------------------------------------------------------------------------- tensor 2 x data 2, DeepSpeed


CLIP = 0.5  # below the tiny model's gradient norm, so clipping acts and a miscounted norm shows
# Adam's m / sqrt(v) turns rounding noise on near-zero gradients into full-size steps; an eps above that
# noise keeps the comparison of weights sharp (elements with real gradients still move by ~LR a step)
ADAM_EPS = 1e-4


def _ds_config(global_batch: int, *, micro: int = 1, zero: int = 0, load_universal: bool = False) -> dict:
    cfg = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_clipping": CLIP,
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "eps": ADAM_EPS, "weight_decay": 0.0, "torch_adam": True}},
        "zero_optimization": {"stage": zero},
        "steps_per_print": 10**6,
    }
    if load_universal:
        cfg["checkpoint"] = {"load_universal": True}
    return cfg


def _ds_tensor_data_run(steps: int, tensor: int, data: int, zero: int, save_dir: str | None = None) -> dict:
    """A DeepSpeed engine (fp32) on a tensor x data layout; DeepSpeed's grid is the mpu."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid
    from deepspeed.runtime.utils import clip_grad_norm_

    from r1_ds.parallel.tensor_parallel import tensor_parallel_group
    from r1_ds.parallel.topology import ParallelDims

    dims = ParallelDims.build(dist.get_world_size(), tensor=tensor, data=data)
    coords = dims.coords(dist.get_rank())
    grid = PipelineParallelGrid(topology=dims.topology())
    group = tensor_parallel_group(dims)
    assert sorted(dist.get_process_group_ranks(group)) == sorted(
        dist.get_process_group_ranks(grid.get_slice_parallel_group())
    )
    model = full_model()
    config = model.config
    apply_tensor_parallel(model, group)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=_ds_config(data, zero=zero), mpu=grid
    )
    losses, norms = [], []
    for step in range(steps):
        ids, labels = batch(step, rows=data, ignore=False)  # equal token counts: mean of means = global mean
        rows = slice(coords.data, coords.data + 1)
        loss = engine(ids[rows], labels=labels[rows]).loss
        engine.backward(loss)
        if zero == 0:  # the norm DeepSpeed clips with (max_norm huge: measure only), from data-averaged grads
            norms.append(float(clip_grad_norm_(list(model.parameters()), max_norm=1e9, mpu=grid)))
        engine.step()
        if zero > 0:
            norms.append(float(engine.get_global_grad_norm()))
        losses.append(loss.item())
    if save_dir:
        engine.save_checkpoint(
            save_dir,
            tag=f"global_step{steps}",
            client_state={"universal_checkpoint_info": universal_checkpoint_info(config, tensor)},
        )
    return dict(coords=coords, losses=losses, norms=norms, state=engine.module.state_dict())


def _ds_tensor_data_body(steps: int, tensor: int, data: int, save_dir: str):
    """ZeRO-0, then ZeRO-1 (saving a checkpoint for the universal-checkpoint test): one spawn for both."""
    return [_ds_tensor_data_run(steps, tensor, data, 0), _ds_tensor_data_run(steps, tensor, data, 1, save_dir)]


def _reference_run(steps: int, rows: int):
    """The one-process model on the global batch: AdamW + clipping at CLIP, as DeepSpeed configures."""
    model = full_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, eps=ADAM_EPS, weight_decay=0.0)
    losses, norms = [], []
    for step in range(steps):
        ids, labels = batch(step, rows=rows, ignore=False)
        opt.zero_grad()
        loss = model(ids, labels=labels).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        opt.step()
        losses.append(loss.item())
    return losses, norms, model.state_dict()


def _check_against_reference(results: list[dict], tensor: int, steps: int, rows: int):
    ref_losses, ref_norms, ref_state = _reference_run(steps, rows)
    assert min(ref_norms) > CLIP  # clipping acted on every step
    init = full_model().state_dict()
    assert min((ref_state[k] - init[k]).abs().max() for k in init) > 1e-3  # every parameter really moved
    by_slot = {}
    for r in results:
        by_slot.setdefault((r["coords"].pipe, r["coords"].data), {})[r["coords"].tensor] = r
    for (pipe, data), shards in by_slot.items():
        merged = merge_tensor_parallel_state_dicts([shards[t]["state"] for t in range(tensor)])
        _assert_full_equal(
            merged,
            {k: v for k, v in ref_state.items() if k in merged},
            atol=2e-5,
            what=f"weights after {steps} AdamW steps (pipe {pipe}, data {data})",
        )
        _assert_replicated_identical([shards[t]["state"] for t in range(tensor)], f"pipe {pipe}, data {data}")
    for r in results:  # the global gradient norm DeepSpeed clipped with is the one-process norm
        torch.testing.assert_close(torch.tensor(r["norms"]), torch.tensor(ref_norms), rtol=1e-4, atol=0)
    return ref_losses


def _resume_body(universal_dir: str, step: int, rows: int):
    """Tensor 1 x data 1, from a universal checkpoint, then one more step on the global batch."""
    import deepspeed

    model = full_model(seed=5)  # other weights: everything must come from the checkpoint
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=model.parameters(),
        config=_ds_config(rows, micro=rows, zero=1, load_universal=True),
    )
    engine.load_checkpoint(universal_dir, tag=f"global_step{step}")
    loaded = {k: v.clone() for k, v in engine.module.state_dict().items()}
    ids, labels = batch(step, rows=rows, ignore=False)
    engine.backward(engine(ids, labels=labels).loss)
    engine.step()
    return loaded, engine.module.state_dict()


@pytest.mark.slow
def test_tensor_2_data_2_deepspeed_equals_one_process_model_and_resumes_as_tensor_1(tmp_path):
    """ZeRO-0 and ZeRO-1 engines give the one-process losses, gradient norms and weights; the ZeRO-1
    checkpoint goes through ds_to_universal (our pattern lists) and resumes at tensor 1 x data 1 with
    its optimizer state: the next step equals the one-process model's next step."""
    import subprocess
    import sys

    steps = 2
    zero0, zero1 = zip(*run_distributed(_ds_tensor_data_body, 4, steps, 2, 2, str(tmp_path / "ckpt")))
    for results in (zero0, zero1):
        ref_losses = _check_against_reference(list(results), tensor=2, steps=steps, rows=2)
        for step in range(steps):  # each data rank saw its own row: their mean is the global-batch loss
            mean = sum(r["losses"][step] for r in results) / len(results)
            assert abs(mean - ref_losses[step]) < 1e-5, (step, mean, ref_losses[step])
        a = [r for r in results if r["coords"].tensor == 0]  # data replicas hold the same weights
        assert all(torch.equal(a[0]["state"][k], a[1]["state"][k]) for k in a[0]["state"])

    universal = tmp_path / "universal"
    tag = f"global_step{steps}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(tmp_path / "ckpt" / tag),
            "--output_folder",
            str(universal / tag),
            "--num_extract_workers",
            "1",
            "--num_merge_workers",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (universal / "latest").write_text(tag)
    ((loaded, after),) = run_distributed(_resume_body, 1, str(universal), steps, 2)
    saved = merge_tensor_parallel_state_dicts([r["state"] for r in zero1 if r["coords"].data == 0])
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    _, _, ref_next = _reference_run(steps + 1, rows=2)
    _assert_full_equal(after, ref_next, atol=2e-5, what="the step after resuming at tensor 1 x data 1")


# ----------------------------------------------------------------------------- pipe x tensor (x data)


def _pipe_tensor_data_body(steps: int, pipe: int, tensor: int, data: int):
    """r1_ds's PipelineModule (r1_ds.parallel.pipeline) with the tensor plan applied by its hook."""
    import deepspeed
    import torch.distributed as dist

    from r1_ds.parallel.deepspeed_patches import needs_fp32_clip_patch, patch_fp32_grad_clipping
    from r1_ds.parallel.pipeline import build_pipeline
    from r1_ds.parallel.state_dict_mapping import pipe_layer_prefixes
    from r1_ds.parallel.topology import ParallelDims

    dims = ParallelDims.build(dist.get_world_size(), pipe=pipe, tensor=tensor, data=data)
    coords = dims.coords(dist.get_rank())
    module = build_pipeline(full_model(), dims)
    engine, *_ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=_ds_config(data))
    if needs_fp32_clip_patch(engine):
        patch_fp32_grad_clipping(engine)
    losses, norms = [], []
    for step in range(steps):
        ids, labels = batch(step, rows=data, ignore=False)
        rows = slice(coords.data, coords.data + 1)
        losses.append(float(engine.train_batch(iter([(ids[rows], labels[rows])]))))  # data-averaged
        norms.append(engine.get_global_grad_norm())
    prefixes = pipe_layer_prefixes(module.r1_config)
    state = {}
    for local, layer in enumerate(module.forward_funcs):
        prefix = prefixes[local + module._local_start]
        if prefix and hasattr(layer, "state_dict"):
            state.update({prefix + k: v.detach().clone() for k, v in layer.state_dict().items()})
    if "embed" in module.tied_modules:
        state["model.embed_tokens.weight"] = module.tied_modules["embed"].weight.detach().clone()
    return dict(coords=coords, losses=losses, norms=norms, state=state)


def _check_pipeline_run(results, *, tensor: int, data: int, steps: int):
    ref_losses = _check_against_reference(results, tensor=tensor, steps=steps, rows=data)
    for r in results:
        for a, b in zip(r["losses"], ref_losses):
            assert abs(a - b) < 1e-5, (r["coords"], r["losses"], ref_losses)
    covered = set().union(*(r["state"] for r in results))
    assert covered == set(full_model().state_dict()) - {"lm_head.weight"}  # every parameter was compared


@pytest.mark.slow
def test_pipe_2_tensor_2_equals_one_process_model():
    steps = 2
    _check_pipeline_run(run_distributed(_pipe_tensor_data_body, 4, steps, 2, 2, 1), tensor=2, data=1, steps=steps)


@pytest.mark.slow
def test_pipe_2_tensor_2_data_2_equals_one_process_model():
    steps = 2
    _check_pipeline_run(run_distributed(_pipe_tensor_data_body, 8, steps, 2, 2, 2), tensor=2, data=2, steps=steps)
