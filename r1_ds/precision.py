"""Mixed precision: the Apex AMP translation, the precision checks, the exponent loss-scale policy.

Everything here is a pure function of dicts and numbers (tested on CPU); the policy is installed into the
engine by `r1_ds.parallel.deepspeed_patches.install_loss_scale_policy`. docs/training.md ("Mixed precision")
states the same rules in prose.
"""

from __future__ import annotations

import copy
import math

# Apex `amp.initialize` defaults that matter for the translation (apex/amp/frontend.py, _initialize.py).
_APEX_INIT_SCALE_POWER = 16  # dynamic scaling starts at 2^16
_APEX_SCALE_WINDOW = 2000  # apex doubles the scale after 2000 overflow-free steps
_APEX_KEYS = {
    "enabled",
    "opt_level",
    "keep_batchnorm_fp32",
    "master_weights",
    "loss_scale",
    "min_loss_scale",
    "max_loss_scale",
    "cast_model_type",
    "patch_torch_functions",
    "cast_model_outputs",
    "num_losses",
    "verbosity",
}


class PrecisionError(ValueError):
    """A precision setting cannot be honoured; the message says why and what to use instead."""


def translate_apex(apex: dict, *, dtype: str | None = None) -> tuple[dict, list[str]]:
    """An Apex AMP block -> a DeepSpeed config patch with the same meaning, and notes saying what was done.

    opt_level O0 -> fp32; O1 -> `torch_autocast` fp16 (fp32 weights, fp16 ops, torch GradScaler);
    O2 -> `fp16` (fp16 weights and activations, fp32 master weights in DeepSpeed's fp16 optimizer);
    O3 (pure fp16, no master weights) has no DeepSpeed equivalent and is refused.
    `dtype="bf16"` keeps the opt level's structure with bf16 (no loss scaling is needed then)."""
    unknown = sorted(set(apex) - _APEX_KEYS)
    if unknown:
        raise PrecisionError(
            f"apex block: unknown key(s) {unknown}; Apex AMP knows {sorted(_APEX_KEYS)}. Fix: remove them."
        )
    notes: list[str] = []
    if apex.get("enabled", True) is False:
        return {}, ["apex block has enabled=false: ignored"]
    level = str(apex.get("opt_level", "O1")).upper()
    if level not in ("O0", "O1", "O2", "O3"):
        raise PrecisionError(f"apex.opt_level={apex.get('opt_level')!r}: must be O0, O1, O2 or O3.")
    half = "bf16" if dtype == "bf16" else "fp16"
    if level == "O0":
        return {"fp16": {"enabled": False}, "bf16": {"enabled": False}}, ["apex O0 -> fp32 (fp16 and bf16 off)"]
    if level == "O3":
        raise PrecisionError(
            "apex.opt_level=O3 is pure fp16 without fp32 master weights; DeepSpeed always keeps fp32 master weights "
            "for fp16, so O3 cannot be reproduced. Fix: use opt_level O2 (fp16 model, fp32 master weights)."
        )
    if apex.get("master_weights") is False:
        raise PrecisionError(
            f"apex.master_weights=false with {level}: DeepSpeed's fp16/bf16 training always updates fp32 master "
            "weights. Fix: remove master_weights or set it to true."
        )

    patch: dict = {}
    if level == "O1":
        patch["torch_autocast"] = {"enabled": True, "dtype": "bfloat16" if half == "bf16" else "float16"}
        patch["fp16"] = {"enabled": False}
        patch["bf16"] = {"enabled": False}
        notes.append(
            f"apex O1 -> torch_autocast {half}: fp32 weights, ops autocast to {half}"
            + ("; loss scaling by torch GradScaler (ZeRO stage 0 only)" if half == "fp16" else "")
        )
    else:  # O2
        patch[half] = {"enabled": True}
        patch["fp16" if half == "bf16" else "bf16"] = {"enabled": False}
        notes.append(
            f"apex O2 -> {half}.enabled: {half} weights and activations, fp32 master weights in the DeepSpeed optimizer"
        )
    if half == "fp16" and level == "O2":
        scale = apex.get("loss_scale", "dynamic")
        fp16 = patch["fp16"]
        if scale == "dynamic":
            fp16.update(
                loss_scale=0,
                initial_scale_power=_APEX_INIT_SCALE_POWER,
                loss_scale_window=_APEX_SCALE_WINDOW,
                hysteresis=1,
                min_loss_scale=apex.get("min_loss_scale") or 1,
            )
            notes.append(
                f"apex loss_scale=dynamic -> fp16.loss_scale=0 (dynamic), initial 2^{_APEX_INIT_SCALE_POWER}, "
                f"x2 after {_APEX_SCALE_WINDOW} clean steps, /2 on every overflow (hysteresis=1), min "
                f"{fp16['min_loss_scale']}"
            )
            if apex.get("max_loss_scale") not in (None, 2.0**24):
                notes.append(f"apex max_loss_scale={apex['max_loss_scale']} has no DeepSpeed setting: not applied")
        else:
            try:
                value = float(scale)
            except (TypeError, ValueError):
                raise PrecisionError(f'apex.loss_scale={scale!r}: must be "dynamic" or a number.') from None
            fp16["loss_scale"] = value
            notes.append(f"apex loss_scale={value} -> fp16.loss_scale={value} (static)")
    elif "loss_scale" in apex and half == "bf16":
        notes.append(
            f"apex loss_scale={apex['loss_scale']!r} dropped: bf16 has fp32's exponent range, no loss scaling is needed"
        )
    elif "loss_scale" in apex and level == "O1" and apex["loss_scale"] != "dynamic":
        raise PrecisionError(
            f"apex O1 with static loss_scale={apex['loss_scale']}: DeepSpeed's torch_autocast only "
            'scales dynamically. Fix: use loss_scale "dynamic" or opt_level O2.'
        )
    kbn = apex.get("keep_batchnorm_fp32")
    if kbn is not None:
        notes.append(
            f"apex keep_batchnorm_fp32={kbn}: nothing to do (R1 has no BatchNorm; RMSNorm normalises in fp32 "
            "whatever the weight dtype)"
        )
    for key in ("cast_model_type", "patch_torch_functions", "cast_model_outputs", "num_losses", "verbosity"):
        if key in apex:
            notes.append(f"apex {key}={apex[key]!r}: implied by the opt level, not applied separately")
    return patch, notes


def merge_patch(ds_config: dict, patch: dict) -> dict:
    """ds_config with each patch section merged in (section keys of the patch win)."""
    out = copy.deepcopy(ds_config)
    for section, values in patch.items():
        if isinstance(values, dict):
            out[section] = {**out.get(section, {}), **values}
        else:
            out[section] = values
    return out


def resolve_precision(
    ds_config: dict, *, dtype: str | None = None, apex: dict | None = None, device_type: str = "cpu"
) -> tuple[dict, list[str]]:
    """Apply precision settings to a DeepSpeed config; refuse what this device cannot run.

    The apex block comes from the training config or from the DS JSON's "apex" (or legacy "amp") key;
    it is removed from the JSON either way (DeepSpeed 0.19.8 rejects "amp")."""
    cfg = copy.deepcopy(ds_config)
    notes: list[str] = []
    for key in ("apex", "amp"):
        block = cfg.pop(key, None)
        if block is not None and apex is None:
            apex = block
            notes.append(f"read the Apex AMP block from the DeepSpeed JSON key {key!r}")
    if apex:
        patch, more = translate_apex(apex, dtype=dtype)
        cfg = merge_patch(cfg, patch)
        notes += more
    elif dtype:
        on = {"bf16": "bf16", "fp16": "fp16"}.get(dtype)
        cfg = merge_patch(cfg, {"fp16": {"enabled": on == "fp16"}, "bf16": {"enabled": on == "bf16"}})
        notes.append(f"precision.dtype={dtype}: fp16.enabled={on == 'fp16'}, bf16.enabled={on == 'bf16'}")
    fp16 = bool(cfg.get("fp16", {}).get("enabled"))
    bf16 = bool(cfg.get("bf16", {}).get("enabled"))
    autocast = cfg.get("torch_autocast", {})
    autocast_fp16 = bool(autocast.get("enabled")) and str(autocast.get("dtype", "")).endswith(
        ("float16", "fp16", "half")
    )
    autocast_fp16 = autocast_fp16 and "bfloat16" not in str(autocast.get("dtype", ""))
    if fp16 and bf16:
        raise PrecisionError("the DeepSpeed config enables both fp16 and bf16. Fix: enable one of them.")
    if (fp16 or autocast_fp16) and device_type == "cpu":
        raise PrecisionError(
            "fp16 training needs a GPU: DeepSpeed's CPU accelerator has no fp16 support (dynamic loss scaling and fp32 "
            "master weights run on CUDA). Fix: on CPU use bf16 (ds_configs/single_gpu_bf16.json works on CPU too, "
            "slowly) or fp32 (ds_configs/tiny_cpu.json)."
        )
    return cfg, notes


def training_dtype(ds_config: dict) -> str:
    if ds_config.get("fp16", {}).get("enabled"):
        return "fp16"
    if ds_config.get("bf16", {}).get("enabled"):
        return "bf16"
    return "fp32"


# ----------------------------------------------------------------------------- exponent loss scale


def binary_exponent(x: float) -> int:
    """e with 2^e <= |x| < 2^(e+1), for finite non-zero x."""
    if x == 0 or not math.isfinite(x):
        raise ValueError(f"binary_exponent({x!r}) needs a finite non-zero number")
    return math.frexp(abs(x))[1] - 1


def exponent_loss_scale(max_abs_grad: float, *, k: int, min_scale: float = 1.0, max_scale: float = 2.0**24) -> float:
    """S = 2^(k - max_exponent), max_exponent = binary_exponent(max |unscaled gradient|), clamped to
    [min_scale, max_scale]. The largest scaled gradient S * max|g| then lies in [2^k, 2^(k+1))."""
    if max_abs_grad == 0:
        return max_scale  # nothing to lose: every gradient is zero
    return float(min(max(2.0 ** (k - binary_exponent(max_abs_grad)), min_scale), max_scale))


class ExponentLossScalePolicy:
    """Every `interval` optimizer steps, set the fp16 loss scale from the largest gradient.

    `update(max_abs_scaled_grad, current_scale)` takes what was measured on the *scaled* gradients of
    the step just taken and returns the scale for the next step, or None to leave DeepSpeed's dynamic
    scaler alone (on overflow, between measurements)."""

    def __init__(self, k: int = 13, interval: int = 1, min_scale: float = 1.0, max_scale: float = 2.0**24):
        if not isinstance(k, int) or not 0 < k <= 15:
            raise PrecisionError(
                f"loss_scale_policy.k={k!r}: must be an integer in 1..15 (fp16 overflows at 2^16). "
                "Fix: use e.g. k=13 (two bits of headroom)."
            )
        if not isinstance(interval, int) or interval < 1:
            raise PrecisionError(f"loss_scale_policy.interval={interval!r}: must be an integer >= 1.")
        self.k, self.interval, self.min_scale, self.max_scale = k, interval, min_scale, max_scale
        self.steps = 0

    @classmethod
    def from_config(cls, cfg: dict) -> ExponentLossScalePolicy:
        cfg = dict(cfg)
        kind = cfg.pop("type", "exponent")
        if kind != "exponent":
            raise PrecisionError(f"loss_scale_policy.type={kind!r}: only 'exponent' exists.")
        try:
            return cls(**cfg)
        except TypeError as err:
            raise PrecisionError(
                f"loss_scale_policy: {err}; known keys: type, k, interval, min_scale, max_scale"
            ) from None

    def update(self, max_abs_scaled_grad: float, current_scale: float) -> float | None:
        self.steps += 1
        if self.steps % self.interval or not math.isfinite(max_abs_scaled_grad):
            return None
        return exponent_loss_scale(
            max_abs_scaled_grad / current_scale, k=self.k, min_scale=self.min_scale, max_scale=self.max_scale
        )
