"""Training settings: precedence, the batch/layout check, the Apex translation, the exponent loss
scale, the LR schedule (all pure; no processes)."""

import json
import math
import os

import pytest

from r1_ds.config import BatchSizeError, ConfigError, load_train_config, resolve_batch
from r1_ds.precision import (
    ExponentLossScalePolicy,
    PrecisionError,
    binary_exponent,
    exponent_loss_scale,
    resolve_precision,
    translate_apex,
)
from r1_ds.train import WarmupCosine, build_ds_config, cli_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def ds():
    return json.load(open(os.path.join(ROOT, "ds_configs", "tiny_cpu.json")))


# ----------------------------------------------------------------------------- the batch-size check


def test_bad_batch_config_is_rejected_with_the_numbers_and_a_fix():
    bad = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}
    with pytest.raises(BatchSizeError) as err:
        resolve_batch(world_size=2, pipe=1, tensor=1, data=0, ds_config=bad)
    msg = str(err.value)
    assert "micro_batch 4 x grad_accum 2 x data_parallel 2 = 16, not 32" in msg
    assert "train_batch_size=16" in msg and "gradient_accumulation_steps=4" in msg  # two ways out


def test_layout_must_divide_the_world_size():
    with pytest.raises(
        BatchSizeError, match=r"pipe=4 x tensor=1 = 4 ranks per replica does not divide the world size 6"
    ):
        resolve_batch(world_size=6, pipe=4, tensor=1, data=0, ds_config={"train_batch_size": 8})


def test_missing_batch_value_is_derived_and_ours_win_over_the_deepspeed_json(ds):
    dims, plan = resolve_batch(world_size=4, pipe=2, tensor=1, data=0, ds_config=ds)  # micro 2, gas 2 from JSON
    assert (dims.data, plan.global_batch, plan.grad_accum) == (2, 8, 2)
    _, plan = resolve_batch(world_size=4, pipe=2, tensor=1, data=0, ds_config=ds, global_batch=32)
    assert (plan.micro_batch, plan.grad_accum, plan.global_batch) == (2, 8, 32)  # JSON gas yields to our batch
    _, plan = resolve_batch(
        world_size=1, pipe=1, tensor=1, data=0, ds_config={"train_batch_size": "auto"}, micro_batch=4, grad_accum=3
    )
    assert plan.global_batch == 12
    _, plan = resolve_batch(world_size=4, pipe=1, tensor=1, data=0, ds_config={"train_batch_size": 32})
    assert (plan.micro_batch, plan.grad_accum) == (8, 1)  # as DeepSpeed derives it: no accumulation
    with pytest.raises(BatchSizeError, match="not divisible by micro_batch 3 x data_parallel 2 = 6"):
        resolve_batch(world_size=2, pipe=1, tensor=1, data=0, ds_config=ds, global_batch=8, micro_batch=3)
    with pytest.raises(BatchSizeError, match="stage 2 has global_batch=6.*multiple of 4"):
        resolve_batch(world_size=2, pipe=1, tensor=1, data=0, ds_config=ds, stage_batches=(6,))


def test_precedence_cli_over_file_over_deepspeed_json(tmp_path, ds):
    import argparse

    from r1_ds.train import add_arguments

    (tmp_path / "run.yaml").write_text("schedule:\n  steps: 50\n  lr: 0.002\n  global_batch: 16\nseed: 5\n")
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--config", str(tmp_path / "run.yaml"), "--lr", "0.004", "--set", "schedule.warmup_steps=5"])
    cfg = load_train_config(args.config, cli_overrides(args))
    assert (cfg.schedule.steps, cfg.schedule.lr, cfg.schedule.warmup_steps, cfg.seed) == (50, 0.004, 5, 5)
    final, dims, plan, _, _ = build_ds_config(cfg, ds, world_size=2, device_type="cpu")
    assert final["optimizer"]["params"]["lr"] == 0.004  # CLI > file > JSON's 1e-3
    assert (final["train_batch_size"], final["gradient_accumulation_steps"]) == (16, 4)  # file > JSON


def test_unknown_keys_and_bad_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stepz'\] in schedule"):
        load_train_config(None, {"schedule.stepz": 3})
    with pytest.raises(ConfigError, match=r"schedule.stages\[0\].data_fraction=1.5"):
        load_train_config(None, {"schedule.stages": [{"global_batch": 4, "data_fraction": 1.5}]})
    with pytest.raises(ConfigError, match="only the last stage may leave steps empty"):
        load_train_config(None, {"schedule.stages": [{"global_batch": 4}, {"global_batch": 8}]})


def test_pipeline_with_zero2_and_stages_with_a_global_batch_are_refused(ds):
    cfg = load_train_config(None, {"parallel.pipe": 2})
    with pytest.raises(ConfigError, match="ZeRO stage 0 or 1 only"):
        build_ds_config(cfg, {**ds, "zero_optimization": {"stage": 2}}, world_size=2, device_type="cpu")
    cfg = load_train_config(None, {"schedule.global_batch": 8, "schedule.stages": [{"global_batch": 4}]})
    with pytest.raises(ConfigError, match="both set"):
        build_ds_config(cfg, ds, world_size=1, device_type="cpu")


def test_compile_flag_and_its_zero3_refusal(ds):
    import argparse

    from r1_ds.train import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert cli_overrides(p.parse_args(["--compile"]))["model.compile"] is True
    assert "model.compile" not in cli_overrides(p.parse_args([]))  # absent: the file's setting stands
    cfg = load_train_config(None, cli_overrides(p.parse_args(["--compile"])))
    build_ds_config(cfg, {**ds, "zero_optimization": {"stage": 2}}, world_size=1, device_type="cpu")  # allowed
    with pytest.raises(ConfigError, match=r"model.compile=true with zero_optimization.stage=3.*Fix: set "):
        build_ds_config(cfg, {**ds, "zero_optimization": {"stage": 3}}, world_size=1, device_type="cpu")


def test_compiled_blocks_past_8192_tokens_on_the_gpu_flex_path_are_refused(ds):
    from r1_ds.config import COMPILED_FLEX_MAX_SEQ_LEN, check_compiled_length

    cfg = load_train_config(None, {"model.compile": True})  # attn_implementation "auto": flex on CUDA
    assert COMPILED_FLEX_MAX_SEQ_LEN == 8192
    check_compiled_length(cfg, 8192, "cuda")  # held to eager and trained on the GPU: allowed
    rule = r"model.compile=true with sequences of 8193 tokens \(data.seq_len\): .*Fix: set model.compile to false"
    with pytest.raises(ConfigError, match=rule):
        check_compiled_length(cfg, 8193, "cuda")
    check_compiled_length(cfg, 32768, "cpu")  # "auto" is eager there: no FlexAttention kernels, any length
    check_compiled_length(
        load_train_config(None, {"model.compile": True, "model.attn_implementation": "eager"}), 32768, "cuda"
    )
    check_compiled_length(load_train_config(None, {}), 32768, "cuda")  # not compiled
    # a set data.seq_len is refused with the other settings, before any folder is written or model built
    long = load_train_config(None, {"model.compile": True, "data.seq_len": 16384})
    with pytest.raises(ConfigError, match="sequences of 16384 tokens"):
        build_ds_config(long, ds, world_size=1, device_type="cuda")
    build_ds_config(long, ds, world_size=1, device_type="cpu")


def test_compiled_blocks_past_2048_tokens_with_an_untrained_l2_apart_mode_are_refused(monkeypatch):
    from r1_ds.config import check_compiled_length
    from r1_ds.model import hierarchical_attention as ha

    cfg = load_train_config(None, {"model.compile": True})
    monkeypatch.setattr(ha, "L2_APART", "op")  # R1_L2_APART=op
    check_compiled_length(cfg, 2048, "cuda")  # L2 in the block graphs: the mode does not apply
    with pytest.raises(ConfigError, match=r"sequences of 4096 tokens .* R1_L2_APART=op: .*Fix: unset R1_L2_APART"):
        check_compiled_length(cfg, 4096, "cuda")
    check_compiled_length(cfg, 4096, "cpu")
    monkeypatch.setattr(ha, "L2_APART", "break")
    check_compiled_length(cfg, 8192, "cuda")


def test_pipeline_under_accelerate_is_a_clear_error(monkeypatch):
    from r1_ds.train import train

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="under `accelerate launch`.*Fix: set parallel.pipe=1"):
        train(load_train_config(None, {"parallel.pipe": 2}))


# ----------------------------------------------------------------------------- mixed precision


APEX = {"opt_level": "O2", "keep_batchnorm_fp32": True, "master_weights": True, "loss_scale": "dynamic"}


def test_apex_o2_dynamic_becomes_deepspeed_fp16_with_the_same_meaning():
    patch, notes = translate_apex(APEX)
    assert patch["fp16"] == {
        "enabled": True,
        "loss_scale": 0,
        "initial_scale_power": 16,
        "loss_scale_window": 2000,
        "hysteresis": 1,
        "min_loss_scale": 1,
    }
    assert patch["bf16"] == {"enabled": False}
    assert any("keep_batchnorm_fp32" in n for n in notes) and any("fp32 master weights" in n for n in notes)


def test_apex_block_in_the_deepspeed_json_is_translated_and_removed():
    cfg, notes = resolve_precision({"apex": APEX, "train_batch_size": 8}, device_type="cuda")
    assert "apex" not in cfg and cfg["fp16"]["enabled"] and cfg["fp16"]["loss_scale"] == 0
    assert notes[0] == "read the Apex AMP block from the DeepSpeed JSON key 'apex'"
    cfg, _ = resolve_precision({"amp": {"enabled": True, "opt_level": "O1"}}, device_type="cuda")
    assert "amp" not in cfg and cfg["torch_autocast"] == {"enabled": True, "dtype": "float16"}


def test_other_apex_levels():
    assert translate_apex({"opt_level": "O0"})[0] == {"fp16": {"enabled": False}, "bf16": {"enabled": False}}
    assert translate_apex({**APEX, "loss_scale": 128.0})[0]["fp16"] == {"enabled": True, "loss_scale": 128.0}
    patch, notes = translate_apex(APEX, dtype="bf16")
    assert patch == {"bf16": {"enabled": True}, "fp16": {"enabled": False}}
    assert any("no loss scaling is needed" in n for n in notes)
    with pytest.raises(PrecisionError, match="O3.*Fix: use opt_level O2"):
        translate_apex({"opt_level": "O3"})
    with pytest.raises(PrecisionError, match="master_weights=false"):
        translate_apex({**APEX, "master_weights": False})
    with pytest.raises(PrecisionError, match="unknown key"):
        translate_apex({**APEX, "opt_levle": "O2"})


def test_fp16_is_refused_on_cpu_with_the_alternative():
    with pytest.raises(PrecisionError, match="fp16 training needs a GPU.*Fix: on CPU use bf16"):
        resolve_precision({"fp16": {"enabled": True}}, device_type="cpu")
    with pytest.raises(PrecisionError, match="fp16 training needs a GPU"):
        resolve_precision({}, apex=APEX, device_type="cpu")
    cfg, _ = resolve_precision({}, dtype="bf16", device_type="cpu")
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}


def test_exponent_loss_scale():
    assert binary_exponent(1.0) == 0 and binary_exponent(0.75) == -1 and binary_exponent(-3.0) == 1
    assert binary_exponent(2.0**-20) == -20
    # max |g| = 0.75 -> max_exponent -1 -> S = 2^(13 + 1); the largest scaled gradient is in [2^13, 2^14)
    s = exponent_loss_scale(0.75, k=13)
    assert s == 2.0**14 and 2**13 <= 0.75 * s < 2**14
    assert exponent_loss_scale(1e-12, k=13) == 2.0**24  # clamped to max_scale
    assert exponent_loss_scale(1e6, k=13, min_scale=1.0) == 1.0  # clamped to min_scale
    for g in (3e-7, 0.01, 1.9, 700.0):
        s = exponent_loss_scale(g, k=13, min_scale=2.0**-30, max_scale=2.0**60)
        assert 2**13 <= g * s < 2**14 and math.log2(s).is_integer()


def test_exponent_policy_reads_scaled_gradients_and_skips_overflow():
    policy = ExponentLossScalePolicy.from_config({"type": "exponent", "k": 12, "interval": 2})
    assert policy.update(0.5 * 1024, current_scale=1024) is None  # not a measuring step (interval 2)
    assert policy.update(0.5 * 1024, current_scale=1024) == 2.0**13  # unscaled max 0.5 -> 2^(12 + 1)
    policy.update(1.0, 1.0)
    assert policy.update(float("inf"), current_scale=1024) is None  # overflow: DeepSpeed's scaler decides
    with pytest.raises(PrecisionError, match="k=16"):
        ExponentLossScalePolicy(k=16)


def test_warmup_cosine():
    f = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    assert [f(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


def test_model_flops_count_every_matmul_weight():
    import torch

    from r1_ds.flops import attention_keys_per_token, dense_params, peak_flops
    from r1_ds.model import R1Config, R1ForCausalLM
    from r1_ds.model.modeling_r1 import R1LevelGate

    config = R1Config.from_preset("tiny")
    model = R1ForCausalLM(config)
    linear = sum(
        m.weight.numel() for m in model.model.layers.modules() if isinstance(m, (torch.nn.Linear, R1LevelGate))
    )
    linear -= sum(layer.self_attn.gate.weight[3:].numel() for layer in model.model.layers)  # alignment rows: no math
    assert dense_params(config) == linear + config.hidden_size * config.vocab_size  # + the (tied) LM head
    # query t of T=64 (window 16, paragraphs 8, documents 32, top-2 routing) sees on average:
    assert (
        attention_keys_per_token(config, 64)
        == sum(min(t + 1, 16) + 1 + min(t // 8, 4) + 8 * min(t // 8, 2) + 1 + t // 32 for t in range(64)) / 64
    )
    assert peak_flops("bf16", "NVIDIA H200") == 989e12 and peak_flops("bf16", "cpu") is None


@pytest.mark.parametrize(
    "overrides, shown",
    [
        ({"log.every": "abc"}, "log.every='abc': must be of type int"),
        ({"schedule.drop_path_max": True}, "schedule.drop_path_max=True: must be of type float"),
        ({"model.overrides": {"num_layers": 4}}, "model.overrides=['num_layers']: names fields R1Config does not have"),
        ({"checkpoint.keep": -3}, "checkpoint.keep=-3: must be >= 0"),
    ],
)
def test_bad_settings_name_the_setting_the_rule_and_the_fix(overrides, shown):
    with pytest.raises(ConfigError) as err:
        load_train_config(None, overrides)
    assert shown in str(err.value) and "Fix:" in str(err.value), str(err.value)


def test_a_bad_compression_section_is_refused_at_start_up(ds):
    from r1_ds.parallel.comm_hook import CompressionConfigError

    ds = {**ds, "r1_compression": {"enabled": True, "topk_ratio": 2}}
    with pytest.raises(CompressionConfigError, match=r"r1_compression.topk_ratio=2: must be in \(0, 1\]"):
        build_ds_config(load_train_config(None, {}), ds, world_size=1, device_type="cpu")
