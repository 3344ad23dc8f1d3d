"""r1_ds.parallel.comm_hook inside real DeepSpeed engines, on 1-4 gloo CPU ranks.

What is checked, per step: every replica holds bit-identical weights (DP peers, TP-replicated copies, pipeline-tied
copies); error feedback conserves the gradient across ranks (mean of what there was to send == what was applied +
mean of the new error buffers); resume restores the error buffers exactly. Plus config validation, refusals, the
auto-fallback decision, and a short convergence run against dense.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from r1_ds.local_ranks import run_distributed
from r1_ds.parallel.tp_layers import copy_to_tp, reduce_from_tp

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

BASE_CONFIG = {
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 1,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.0, "torch_adam": True}},
    "steps_per_print": 10**9,
}


def _section(**overrides) -> dict:
    """A deterministic r1_compression section: compress from step 1, no timing-based decisions, 1-D params too."""
    s = {
        "enabled": True,
        "topk_ratio": 0.05,
        "bits": 8,
        "error_feedback": True,
        "warmup_steps": 1,
        "auto_fallback": False,
        "dense_1d": False,
        "quant_chunk": 16,
    }
    s.update(overrides)
    return s


def _hash(tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# config: pure, no ranks


def test_config_defaults_and_disabled():
    from r1_ds.parallel.comm_hook import install_compression
    from r1_ds.parallel.compression_config import CompressionConfig, split_r1_sections

    cfg = CompressionConfig.from_dict({"enabled": True})
    assert (cfg.topk_ratio, cfg.bits, cfg.error_feedback, cfg.warmup_steps, cfg.mode) == (0.05, 8, True, 100, "leader")
    assert install_compression(object(), {"train_batch_size": 8}) is None  # absent: engine untouched
    assert install_compression(object(), {"r1_compression": {"enabled": False}}) is None
    rest, ours = split_r1_sections({"train_batch_size": 8, "r1_compression": {"enabled": True}})
    assert rest == {"train_batch_size": 8} and ours == {"enabled": True}


@pytest.mark.parametrize(
    "section,match",
    [
        ({"topk_ratio": 0.0}, r"r1_compression.topk_ratio=0.0: must be in \(0, 1\]; use e.g. 0.05"),
        ({"topk_ratio": 1.5}, r"topk_ratio=1.5: must be in \(0, 1\]"),
        ({"bits": 4}, r"r1_compression.bits=4: only 8-bit .*; set bits to 8"),
        ({"bits": True}, r"bits=True: must be an integer"),
        ({"warmup_steps": -1}, r"warmup_steps=-1: must be >= 0"),
        ({"mode": "ring"}, r"mode='ring': must be 'leader' or 'allgather'"),
        ({"selection": "sort"}, r"selection='sort': must be 'threshold' or 'topk'"),
        ({"error_feedback": "yes"}, r"error_feedback='yes': must be true or false"),
        ({"quant_chunk": 0}, r"quant_chunk=0: must be in \[1, 65536\]"),
        ({"topk": 0.05}, r"unknown keys \['topk'\]; valid keys are \["),
    ],
)
def test_config_errors_name_field_value_rule_fix(section, match):
    from r1_ds.parallel.compression_config import CompressionConfig

    with pytest.raises((ValueError, TypeError), match=match):
        CompressionConfig.from_dict({"enabled": True, **section})


def test_config_parsed_once_into_the_object_the_hook_takes():
    from r1_ds.parallel.comm_hook import install_compression
    from r1_ds.parallel.compression_config import CompressionConfig, compression_config

    rest, cfg = compression_config({"train_batch_size": 8, "r1_compression": {"enabled": True, "timing": True}})
    assert rest == {"train_batch_size": 8} and isinstance(cfg, CompressionConfig) and cfg.timing
    assert CompressionConfig.from_dict(cfg.to_dict()) == cfg  # the written section reads back as the same settings
    assert compression_config({"train_batch_size": 8}) == ({"train_batch_size": 8}, None)
    assert not CompressionConfig().timing  # the hot path does not synchronise unless asked
    assert install_compression(object(), None) is None
    assert install_compression(object(), CompressionConfig(enabled=False)) is None
    with pytest.raises(ValueError, match=r"r1_compression.timing='no': must be true or false"):
        compression_config({"r1_compression": {"timing": "no"}})


# ----------------------------------------------------------------------------------------------------------------
# decision, bucket plan, wire: pure, no ranks


def test_schedule_phases_probe_and_decision():
    from r1_ds.parallel.comm_schedule import CompressionSchedule

    plain = CompressionSchedule(warmup_steps=2, auto_fallback=False, probe_steps=5, min_speedup=1.0)
    assert [plain.phase(s) for s in range(4)] == ["dense-warmup"] * 2 + ["compressed"] * 2
    assert not any(plain.due(s) or plain.timed_side(s) for s in range(10))

    s = CompressionSchedule(warmup_steps=3, auto_fallback=True, probe_steps=2, min_speedup=1.5)
    assert s.compression_start == 3
    assert [s.timed_side(i) for i in range(5)] == [None, "dense", "dense", "compressed", "compressed"]
    for i, t in enumerate([9.0, 1.0, 3.0, 2.0, 4.0]):
        s.record(i, t)
    assert s.times == {"dense": [1.0, 3.0], "compressed": [2.0, 4.0]} and s.medians() == (2.0, 3.0)
    assert not s.due(4) and s.due(5)
    assert s.decide(*s.medians()) == "dense"  # 2/3 < 1.5
    assert s.phase(5) == "dense-fallback" and s.timed_side(5) is None and not s.due(6)
    assert s.probe == {"dense_s": 2.0, "compressed_s": 3.0, "speedup": 2.0 / 3.0}
    fast = CompressionSchedule(warmup_steps=0, auto_fallback=True, probe_steps=2, min_speedup=1.0)
    assert fast.compression_start == 2 and fast.decide(3.0, 1.0) == "compressed" and fast.phase(9) == "compressed"


def test_bucket_plan_separates_dense_tensor_parallel_and_tied():
    from r1_ds.parallel.comm_plan import pieces, plan_buckets

    w1, w2, tied_w, tp_w = (nn.Parameter(torch.zeros(3, 2)) for _ in range(4))
    bias = nn.Parameter(torch.zeros(3))
    half = nn.Parameter(torch.zeros(2, 2, dtype=torch.bfloat16))
    pairs = [(p, p.data) for p in (w1, bias, tied_w, tp_w, w2, half)]
    buckets = plan_buckets(
        pairs, dense_1d=True, tied={id(tied_w): "tied:embed.weight"}, is_tensor_parallel=lambda p: p is tp_w
    )
    assert [(b.key, [id(p) for p in b.params], b.numel, b.dense) for b in buckets] == [
        ("float32/rep/-", [id(w1), id(w2)], 12, False),
        ("dense", [id(bias)], 3, True),
        ("float32/rep/tied:embed.weight", [id(tied_w)], 6, False),
        ("float32/tp/-", [id(tp_w)], 6, False),
        ("bfloat16/rep/-", [id(half)], 4, False),
    ]
    no_dense = plan_buckets(pairs, dense_1d=False, tied={}, is_tensor_parallel=lambda p: False)
    assert [b.key for b in no_dense] == ["float32/rep/-", "bfloat16/rep/-"]
    flat = torch.arange(9.0)
    got = [(tuple(g.shape), v.tolist()) for g, v in pieces(flat, [torch.zeros(2, 2), torch.zeros(5)])]
    assert got == [((2, 2), [0.0, 1.0, 2.0, 3.0]), ((5,), [4.0, 5.0, 6.0, 7.0, 8.0])]


def test_wire_counts_bytes_and_synchronises_only_with_timing():
    from r1_ds.parallel.comm_reduce import Wire, ring_bytes

    syncs, calls = [], []
    untimed = Wire(None, None, world=4, rank=0)
    untimed.run("all_gather", 100, calls.append, "a")
    assert calls == ["a"] and untimed.stats["comm_s"] is None
    assert untimed.stats["payload_bytes"] == 100 and untimed.stats["bytes_sent"] == ring_bytes("all_gather", 100, 4)
    timed = Wire(None, None, world=4, rank=0, sync=lambda: syncs.append(1))
    timed.run("all_reduce", 40, calls.append, "b")
    timed.run("broadcast", 8, calls.append, "c")
    assert len(syncs) == 4 and timed.stats["comm_s"] >= 0.0 and calls == ["a", "b", "c"]
    assert timed.stats["bytes_sent"] == 2 * 3 / 4 * 40 + 3 / 4 * 8
    assert ring_bytes("all_reduce", 100, 1) == 0.0


# ----------------------------------------------------------------------------------------------------------------
# plain DeepSpeedEngine


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 8))


def _batch(step: int, rank: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(4, 16, generator=g).to(dtype), torch.randn(4, 8, generator=g).to(dtype)


def _capture_conservation(reducer, log: list) -> None:
    """Wrap reducer.reduce: after each compressed step, check across the DP group that
    mean_r(grad_r + old_error_r) == applied + mean_r(new_error_r), and log the worst relative gap."""
    import deepspeed.comm as dist

    inner = reducer.reduce

    def reduce(elements_per_buffer):
        pairs = reducer._param_grads()
        before = {id(p): g.detach().float().clone() for p, g in pairs}
        old = {k: v.clone() for k, v in reducer.errors.items()}
        inner(elements_per_buffer)
        if not reducer.last_stats()["mode"].startswith("compressed"):
            return
        old_e, new_e = {}, {}
        for b in reducer._buckets:  # error buffers are flat per bucket: cut them back into parameters
            offset = 0
            for p in b.params:
                n = p.numel()
                for src, dst in ((old, old_e), (reducer.errors, new_e)):
                    if b.key in src:
                        dst[id(p)] = src[b.key][offset : offset + n].view(p.shape)
                offset += n
        worst = 0.0
        for p, g in pairs:
            zero = torch.zeros(p.shape)
            x = before[id(p)] + old_e.get(id(p), zero)
            e = new_e.get(id(p), zero).clone()
            dist.all_reduce(x, group=reducer.dp_group)
            dist.all_reduce(e, group=reducer.dp_group)
            lhs, rhs = x / reducer.dp_size, g.detach().float() + e / reducer.dp_size
            worst = max(worst, float((lhs - rhs).abs().max() / lhs.abs().max().clamp_min(1e-12)))
        log.append(worst)

    reducer.reduce = reduce


def _plain_engine(section, dtype: str = "fp32", zero: int = 0):
    import deepspeed

    from r1_ds.parallel.comm_hook import install_compression

    config = dict(BASE_CONFIG, r1_compression=section)
    if dtype == "bf16":
        config["bf16"] = {"enabled": True}
    if zero:
        config["zero_optimization"] = {"stage": zero}
    model = _mlp()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    return engine, install_compression(engine, config)


def _plain_steps(engine, reducer, steps: range, dtype=torch.float32) -> dict:
    import deepspeed.comm as dist

    hashes, modes = [], []
    for step in steps:
        x, y = _batch(step, dist.get_rank(), dtype)
        engine.backward(F.mse_loss(engine(x).float(), y.float()))
        engine.step()
        hashes.append(_hash(engine.module.parameters()))
        modes.append(reducer.last_stats()["mode"])
    return {"hashes": hashes, "modes": modes}


def _plain_run(section: dict, dtype: str = "fp32", steps: int = 6) -> dict:
    engine, reducer = _plain_engine(section, dtype)
    conservation: list[float] = []
    if dtype == "fp32":
        _capture_conservation(reducer, conservation)
    out = _plain_steps(engine, reducer, range(steps), torch.bfloat16 if dtype == "bf16" else torch.float32)
    out.update(conservation=conservation, stats=reducer.last_stats(), optimizer=type(engine.optimizer).__name__)
    return out


def _assert_replicas_identical(results: list[dict]) -> None:
    for step in range(len(results[0]["hashes"])):
        assert len({r["hashes"][step] for r in results}) == 1, f"replicas differ after step {step}"


def _refusals() -> dict:
    out = {}
    for name, kwargs in {"zero2": dict(zero=2), "zero1_fp32": dict(zero=1)}.items():
        try:
            _plain_engine(_section(), **kwargs)
            out[name] = "accepted"
        except ValueError as e:
            out[name] = str(e)
    return out


def _fallback_run(min_speedup: float) -> dict:
    engine, reducer = _plain_engine(
        _section(auto_fallback=True, warmup_steps=2, probe_steps=2, min_speedup=min_speedup)
    )
    out = _plain_steps(engine, reducer, range(7))
    out.update(decision=reducer.decision, probe=reducer.probe, errors=len(reducer.errors))
    return out


def _resume_run(ckpt_dir: str) -> dict:
    """Train 4 steps, checkpoint, train 3; then a fresh engine resumes and trains the same 3."""
    engine, reducer = _plain_engine(_section())
    _plain_steps(engine, reducer, range(4))
    saved = reducer.state_dict()
    engine.save_checkpoint(ckpt_dir, tag="s4", client_state={"r1_compression": saved})
    errors_at_save = {k: v.clone() for k, v in reducer.errors.items()}
    reference = _plain_steps(engine, reducer, range(4, 7))["hashes"]

    out = {"reference": reference, "errors_saved": {k: v.numel() for k, v in errors_at_save.items()}}
    for restore in ("full", "no_errors"):
        engine2, reducer2 = _plain_engine(_section())
        _, client = engine2.load_checkpoint(ckpt_dir, tag="s4")
        state = client["r1_compression"]
        if restore == "no_errors":
            state = dict(state, errors={})
        reducer2.load_state_dict(state)
        if restore == "full":  # the buffers as restored (before the first step they wait in _pending_errors)
            out["restored_equal"] = sorted(reducer2._pending_errors) == sorted(errors_at_save) and all(
                torch.equal(reducer2._pending_errors[k], v) for k, v in errors_at_save.items()
            )
            out["step"] = reducer2.step
        out[restore] = _plain_steps(engine2, reducer2, range(4, 7))["hashes"]
    # resumed with error feedback switched off: the saved residuals must not be added into new gradients
    engine3, reducer3 = _plain_engine(_section(error_feedback=False))
    _, client = engine3.load_checkpoint(ckpt_dir, tag="s4")
    reducer3.load_state_dict(client["r1_compression"])
    out["feedback_off_buffers"] = len(reducer3._pending_errors) + len(reducer3.errors)
    _plain_steps(engine3, reducer3, range(4, 5))
    out["feedback_off_buffers_after_step"] = len(reducer3.errors)
    return out


# ----------------------------------------------------------------------------------------------------------------
# PipelineEngine: 2 stages x DP 2, tied embedding / head, a parameter marked tensor-parallel


VOCAB, DIM = 32, 16


class _Mixer(nn.Module):
    def __init__(self, dim: int, mark_tp: bool = False):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        if mark_tp:  # its own bucket, as a real TP shard would get
            self.fc.weight.tensor_model_parallel = True

    def forward(self, x):
        return x + F.gelu(self.fc(x))


def _head(module, x):
    return F.linear(x, module.weight)  # (B, T, VOCAB), the tied embedding used as LM head


def _ce(logits, labels):
    return F.cross_entropy(logits.float().reshape(-1, VOCAB), labels.reshape(-1))


def _pipe_engine(section: dict, dtype: str, zero: int, naive: bool = False):
    import deepspeed
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

    from r1_ds.parallel.comm_hook import install_compression

    torch.manual_seed(0)
    layers = [
        TiedLayerSpec("embed", nn.Embedding, VOCAB, DIM),
        LayerSpec(_Mixer, DIM, mark_tp=True),
        LayerSpec(_Mixer, DIM),
        LayerSpec(nn.LayerNorm, DIM),
        TiedLayerSpec("embed", nn.Embedding, VOCAB, DIM, forward_fn=_head),
    ]
    model = PipelineModule(layers, num_stages=2, loss_fn=_ce, partition_method="uniform")
    config = dict(BASE_CONFIG, gradient_accumulation_steps=2, r1_compression=section)
    if dtype == "bf16":
        config["bf16"] = {"enabled": True}
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    if zero:
        config["zero_optimization"] = {"stage": zero}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters()], config=config)
    reducer = install_compression(engine, config)
    if naive:  # the pitfall: one flat bucket for everything, tied weight included
        reducer._plan = _naive_plan
    return engine, reducer


def _naive_plan(pairs):
    from r1_ds.parallel.comm_plan import Bucket as _Bucket

    return [_Bucket("all", [p for p, _ in pairs], sum(p.numel() for p, _ in pairs), False)]


def _pipe_steps(engine, reducer, steps: range) -> dict:
    dp = engine.grid.get_data_parallel_id()
    stage = engine.grid.get_stage_id()
    hashes, tied = [], []
    for step in steps:
        g = torch.Generator().manual_seed(100 * dp + step)
        micro = [
            (torch.randint(VOCAB, (4, 8), generator=g), torch.randint(VOCAB, (4, 8), generator=g)) for _ in range(2)
        ]
        engine.train_batch(iter(micro))
        hashes.append(_hash(engine.module.parameters()))
        tied.append(_hash([engine.module.tied_modules["embed"].weight]))
    return {
        "hashes": hashes,
        "tied": tied,
        "stage": stage,
        "dp": dp,
        "stats": reducer.last_stats(),
        "optimizer": type(engine.optimizer).__name__,
        "buckets": [b.key for b in reducer._buckets],
    }


def _pipe_run(section: dict, dtype: str, zero: int, naive: bool = False, ckpt_dir: str | None = None) -> dict:
    engine, reducer = _pipe_engine(section, dtype, zero, naive)
    out = _pipe_steps(engine, reducer, range(4))
    if ckpt_dir is None:
        return out
    engine.save_checkpoint(ckpt_dir, tag="s4", client_state={"r1_compression": reducer.state_dict()})
    saved = {k: v.clone() for k, v in reducer.errors.items()}
    reference = _pipe_steps(engine, reducer, range(4, 6))
    engine2, reducer2 = _pipe_engine(section, dtype, zero)
    _, client = engine2.load_checkpoint(ckpt_dir, tag="s4")
    reducer2.load_state_dict(client["r1_compression"])
    restored = {k: v.clone() for k, v in reducer2._pending_errors.items()}
    resumed = _pipe_steps(engine2, reducer2, range(4, 6))
    out.update(
        reference=reference["hashes"],
        resumed=resumed["hashes"],
        restored_equal=bool(saved)
        and sorted(saved) == sorted(restored)
        and all(torch.equal(saved[k], restored[k]) for k in saved),
    )
    return out


def _check_pipe(results: list[dict]) -> None:
    by_stage = {}
    for r in results:
        by_stage.setdefault(r["stage"], []).append(r)
    assert sorted(by_stage) == [0, 1]
    for stage, peers in by_stage.items():
        for step in range(len(peers[0]["hashes"])):
            assert len({p["hashes"][step] for p in peers}) == 1, f"stage {stage}: DP replicas differ at step {step}"
    for step in range(len(results[0]["tied"])):
        assert len({r["tied"][step] for r in results}) == 1, f"tied embedding/head copies differ at step {step}"


# ----------------------------------------------------------------------------------------------------------------
# tensor parallel 2 x DP 2 (one pipeline stage): TP-replicated parameters must stay identical on both TP ranks


class _TPMLP(nn.Module):
    """Column-parallel fc (rows sharded) -> GELU -> row-parallel proj (columns sharded), Megatron style."""

    def __init__(self, dim: int, group, tp_rank: int, tp: int):
        super().__init__()
        torch.manual_seed(1)
        fc, proj = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim, bias=False)
        shard = 4 * dim // tp
        self.fc = nn.Parameter(fc.weight.detach()[tp_rank * shard : (tp_rank + 1) * shard].clone())
        self.proj = nn.Parameter(proj.weight.detach()[:, tp_rank * shard : (tp_rank + 1) * shard].clone())
        self.fc.tensor_model_parallel = self.proj.tensor_model_parallel = True
        self.group = group

    def forward(self, x):
        h = F.gelu(F.linear(copy_to_tp(x, self.group), self.fc))
        return x + reduce_from_tp(F.linear(h, self.proj), self.group)


class _Embed(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.emb = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Linear(DIM, DIM)  # replicated 2-D weight, compressed with the other replicated params

    def forward(self, tokens):
        return self.mix(self.emb(tokens))


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.norm, self.out = nn.LayerNorm(DIM), nn.Linear(DIM, VOCAB)

    def forward(self, x):
        return self.out(self.norm(x))


def _tp_run(section: dict, naive: bool) -> dict:
    import deepspeed
    from deepspeed.pipe import PipelineModule
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid, PipeModelDataParallelTopology

    from r1_ds.parallel.comm_hook import install_compression

    topo = PipeModelDataParallelTopology(num_pp=1, num_mp=2, num_dp=2)
    grid = PipelineParallelGrid(topology=topo)
    tp_group, tp_rank = grid.get_slice_parallel_group(), grid.get_slice_parallel_rank()
    layers = [_Embed(), _TPMLP(DIM, tp_group, tp_rank, 2), _Head()]
    model = PipelineModule(layers, topology=topo, loss_fn=_ce, partition_method="uniform")
    config = dict(BASE_CONFIG, r1_compression=section)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=config)
    reducer = install_compression(engine, config)
    if naive:
        reducer._plan = _naive_plan
    dp = engine.grid.get_data_parallel_id()
    replicated, full = [], []
    for step in range(5):
        g = torch.Generator().manual_seed(100 * dp + step)
        tokens, labels = torch.randint(VOCAB, (4, 8), generator=g), torch.randint(VOCAB, (4, 8), generator=g)
        engine.train_batch(iter([(tokens, labels)]))
        params = list(engine.module.parameters())
        replicated.append(_hash(p for p in params if not getattr(p, "tensor_model_parallel", False)))
        full.append(_hash(engine.module.parameters()))
    return {
        "tp": tp_rank,
        "dp": dp,
        "replicated": replicated,
        "full": full,
        "buckets": [b.key for b in reducer._buckets],
    }


# ----------------------------------------------------------------------------------------------------------------
# the runs: grouped into three spawns, shared by the tests below through module-scoped fixtures


def _two_rank_suite(ckpt_dir: str) -> dict:
    """Everything that runs on 2 ranks, in one spawn (each spawn costs ~10 s of imports on 2 cores)."""
    from benchmarks.tiny_lm import compression_section, train_tiny_lm

    return {
        "leader": _plain_run(_section(mode="leader", selection="threshold")),
        "allgather": _plain_run(_section(mode="allgather", selection="topk")),
        "fallback_dense": _fallback_run(1e9),
        "fallback_keep": _fallback_run(0.0),
        "resume": _resume_run(ckpt_dir),
        "refusals": _refusals(),
        "dense_lm": train_tiny_lm(None, steps=CONVERGENCE_STEPS),
        "compressed_lm": train_tiny_lm(compression_section("leader", 20), steps=CONVERGENCE_STEPS),
    }


def _four_rank_plain_suite() -> dict:
    return {
        "leader": _plain_run(_section(mode="leader", selection="topk")),
        "allgather": _plain_run(_section(mode="allgather", selection="threshold")),
        "bf16": _plain_run(_section(dense_1d=True), "bf16"),
    }


def _four_rank_pipe_suite(ckpt_dir: str) -> dict:
    return {
        "bf16_zero1_leader": _pipe_run(_section(mode="leader"), "bf16", 1, ckpt_dir=ckpt_dir),
        "fp32_allgather": _pipe_run(_section(mode="allgather"), "fp32", 0),
        "naive": _pipe_run(_section(mode="leader"), "fp32", 0, naive=True),
        # 25%: shard gradients are small next to the head's, at 5% only replicated elements would be picked
        "tp": _tp_run(_section(mode="leader", topk_ratio=0.25), naive=False),
        "tp_naive": _tp_run(_section(mode="leader", topk_ratio=0.25), naive=True),
    }


CONVERGENCE_STEPS = 120


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return run_distributed(_two_rank_suite, 2, str(tmp_path_factory.mktemp("ckpt_plain")))


@pytest.fixture(scope="module")
def four_plain():
    return run_distributed(_four_rank_plain_suite, 4)


@pytest.fixture(scope="module")
def four_pipe(tmp_path_factory):
    return run_distributed(_four_rank_pipe_suite, 4, str(tmp_path_factory.mktemp("ckpt_pipe")))


def _runs(results: list[dict], name: str) -> list[dict]:
    return [r[name] for r in results]


# -- plain engine --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("world,mode", [(2, "leader"), (2, "allgather"), (4, "leader"), (4, "allgather")])
def test_plain_fp32_replicas_identical_and_gradient_conserved(world, mode, request):
    results = _runs(request.getfixturevalue("two" if world == 2 else "four_plain"), mode)
    _assert_replicas_identical(results)
    assert results[0]["modes"] == ["dense-warmup"] + ["compressed"] * 5
    for r in results:
        assert len(r["conservation"]) == 5 and max(r["conservation"]) < 1e-5, r["conservation"]
    stats = results[0]["stats"]
    assert stats["bytes_sent"] < stats["dense_bytes"] and stats["selected"] < stats["elements"]
    assert {"bytes_sent", "dense_bytes", "ratio", "compress_s", "comm_s", "reduce_s"} <= set(stats)


@pytest.mark.slow
def test_plain_bf16_4_ranks(four_plain):
    results = _runs(four_plain, "bf16")
    _assert_replicas_identical(results)
    assert results[0]["optimizer"] == "FP16_UnfusedOptimizer"  # DeepSpeed's bf16 ZeRO-0 wrapper, bf16 .grad
    assert results[0]["modes"][-1] == "compressed"
    assert results[0]["stats"]["dense_bytes"] == results[0]["stats"]["dense_fp32_bytes"] / 2  # bf16 on the wire


@pytest.mark.slow
def test_refuses_zero2_and_zero1_fp32_with_a_fix(two):
    out = two[0]["refusals"]
    assert "zero_optimization.stage=2 is not supported" in out["zero2"]
    assert "Set zero_optimization.stage to 0 or 1" in out["zero2"]
    assert "ZeRO-1 with DeepSpeedZeroOptimizer is not supported" in out["zero1_fp32"]
    assert '"grad_accum_dtype": "fp32"' in out["zero1_fp32"]


@pytest.mark.slow
@pytest.mark.parametrize("name,decision", [("fallback_dense", "dense"), ("fallback_keep", "compressed")])
def test_auto_fallback_all_ranks_agree(two, name, decision):
    results = _runs(two, name)
    _assert_replicas_identical(results)
    expected_tail = "dense-fallback" if decision == "dense" else "compressed"
    for r in results:
        assert r["decision"] == decision
        assert r["modes"] == ["dense-warmup"] * 2 + ["compressed-probe"] * 2 + [expected_tail] * 3
        assert set(r["probe"]) == {"dense_s", "compressed_s", "speedup"}
    assert results[0]["probe"] == results[1]["probe"]  # decided on the world's maximum, so every rank agrees
    if decision == "dense":
        assert results[0]["errors"] == 0  # buffers flushed into the first dense step, then dropped


@pytest.mark.slow
def test_resume_restores_error_buffers(two):
    results = _runs(two, "resume")
    for r in results:
        assert r["errors_saved"], "no error buffers to save: the test would prove nothing"
        assert r["restored_equal"] and r["step"] == 4
        assert r["full"] == r["reference"], "resumed run differs from the uninterrupted one"
        assert r["no_errors"] != r["reference"], "dropping the buffers changed nothing: the check is too weak"
        assert r["feedback_off_buffers"] == 0 and r["feedback_off_buffers_after_step"] == 0
    assert results[0]["reference"] == results[1]["reference"]


# -- pipeline and tensor parallel ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bf16_zero1_leader", "fp32_allgather"])
def test_pipeline_2_stages_dp2_tied_weights_identical(four_pipe, name):
    results = _runs(four_pipe, name)
    _check_pipe(results)
    assert results[0]["optimizer"] == ("BF16_Optimizer" if name.startswith("bf16") else "AdamW")
    keys = results[0]["buckets"]  # BF16_Optimizer reduces its fp32 accumulation buffers, so float32 throughout
    assert {"float32/rep/tied:embed.weight", "float32/tp/-", "float32/rep/-"} <= set(keys), keys
    assert results[0]["stats"]["mode"] == "compressed"
    if name.startswith("bf16"):
        for r in results:
            assert r["restored_equal"], "pipeline resume did not restore the error buffers"
            assert r["resumed"] == r["reference"], "pipeline resume differs from the uninterrupted run"


@pytest.mark.slow
def test_pipeline_naive_single_bucket_drifts(four_pipe):
    """The control for the test above: one flat bucket lets the tied copies drift, so that check can fail."""
    with pytest.raises(AssertionError, match="tied embedding/head copies differ"):
        _check_pipe(_runs(four_pipe, "naive"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tp", "tp_naive"])
def test_tensor_parallel_replicated_params_identical(four_pipe, name):
    results = _runs(four_pipe, name)
    steps = range(len(results[0]["full"]))
    for tp in (0, 1):
        peers = [r for r in results if r["tp"] == tp]
        for s in steps:
            assert len({p["full"][s] for p in peers}) == 1, f"DP replicas of TP rank {tp} differ at step {s}"
    drift = [s for s in steps if len({r["replicated"][s] for r in results}) > 1]
    if name == "tp_naive":
        assert drift, "one flat bucket should let TP-replicated params drift; the check cannot fail otherwise"
    else:
        assert not drift, f"TP-replicated parameters differ between TP ranks at steps {drift}"
        assert {"float32/tp/-", "float32/rep/-"} <= set(results[0]["buckets"])


# -- convergence, short version of benchmarks/compression_convergence.py ------------------------------------------


@pytest.mark.slow
def test_tiny_lm_compressed_within_2_percent_of_dense(two):
    dense = two[0]["dense_lm"]["eval_loss"]
    comp = _runs(two, "compressed_lm")
    assert comp[0]["eval_loss"] == comp[1]["eval_loss"]
    assert comp[0]["stats"]["mode"] == "compressed" and comp[0]["stats"]["ratio"] > 10
    initial = torch.log(torch.tensor(64.0)).item()
    assert dense < initial - 1.0, f"dense did not learn (loss {dense:.3f}); the comparison would mean nothing"
    gap = (comp[0]["eval_loss"] - dense) / dense
    assert gap < 0.02, f"compressed held-out loss {comp[0]['eval_loss']:.4f} is {gap:.1%} above dense {dense:.4f}"
