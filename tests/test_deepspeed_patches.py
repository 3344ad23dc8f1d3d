"""Every patch of DeepSpeed's behaviour (r1_ds/parallel/deepspeed_patches.py) refuses a DeepSpeed other than the
pinned one, naming itself, before it changes anything."""

from __future__ import annotations

import types

import deepspeed
import deepspeed.ops
import pytest
import torch

from r1_ds.parallel import deepspeed_patches as patches
from r1_ds.precision import ExponentLossScalePolicy


def _engine():
    """A stand-in engine with the attributes the patches replace; a patch that ran would rebind them."""
    engine = types.SimpleNamespace(
        buffered_allreduce_fallback=object(),
        clip_fp32_gradients=object(),
        module=types.SimpleNamespace(loss_fn=object()),
    )
    engine.optimizer = types.SimpleNamespace(step=object(), loss_scaler=types.SimpleNamespace(cur_scale=1.0))
    return engine


def _weights_only_loads():
    with patches.weights_only_loads():
        pass


def _pipeline_loss_fn(engine):
    with patches.pipeline_loss_fn(engine.module, lambda outputs, labels: None):
        pass


APPLY = {
    "disable_cpu_shm_comm": lambda engine: patches.disable_cpu_shm_comm(),
    "patch_fp32_grad_clipping": patches.patch_fp32_grad_clipping,
    "install_loss_scale_policy": lambda engine: patches.install_loss_scale_policy(engine, ExponentLossScalePolicy()),
    "replace_gradient_reduction": lambda engine: patches.replace_gradient_reduction(engine, lambda n: None),
    "weights_only_loads": lambda engine: _weights_only_loads(),
    "pipeline_loss_fn": _pipeline_loss_fn,
}


def test_the_table_lists_every_patch():
    patch_functions = set(patches.__all__) - {
        "PINNED_DEEPSPEED",
        "DeepSpeedVersionError",
        "check_deepspeed_version",
        "needs_fp32_clip_patch",
    }
    assert patch_functions == set(APPLY)


def test_the_pin_is_the_installed_version():
    assert deepspeed.__version__.split("+")[0] == patches.PINNED_DEEPSPEED


@pytest.mark.parametrize("name", sorted(APPLY))
def test_every_patch_refuses_an_unknown_deepspeed_version(name, monkeypatch):
    monkeypatch.setattr(deepspeed, "__version__", "0.20.0")
    monkeypatch.setitem(deepspeed.ops.__compatible_ops__, "deepspeed_shm_comm", "untouched")
    engine = _engine()
    before = (
        engine.buffered_allreduce_fallback,
        engine.clip_fp32_gradients,
        engine.optimizer.step,
        engine.module.loss_fn,
    )
    load = torch.load
    with pytest.raises(patches.DeepSpeedVersionError, match=rf"{name} was written for DeepSpeed 0\.19\.8.*0\.20\.0"):
        APPLY[name](engine)
    assert (
        engine.buffered_allreduce_fallback,
        engine.clip_fp32_gradients,
        engine.optimizer.step,
        engine.module.loss_fn,
    ) == before
    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] == "untouched"
    assert torch.load is load
