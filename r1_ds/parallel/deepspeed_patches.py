"""Every change r1_ds makes to DeepSpeed's behaviour, in one file.

Each patch is a function that first checks the DeepSpeed version it was written against
(`PINNED_DEEPSPEED`): the internals it replaces are not API and move between releases, so another version
fails loudly with the patch's name and what to re-verify, instead of patching a method that no longer runs.
The callers decide when a patch applies; the math each one calls lives elsewhere (the compressed reduction in
`r1_ds.parallel.compression` and `comm_hook`, the loss-scale rule in `r1_ds.precision`, the checkpoint
allowlist in `r1_ds.safe_load`).

    patch                          | replaces                                            | applied from
    disable_cpu_shm_comm           | deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] | r1_ds.distributed, r1_ds.local_ranks, benchmarks
    patch_fp32_grad_clipping       | DeepSpeedEngine.clip_fp32_gradients (per engine)    | r1_ds.train
    install_loss_scale_policy      | engine.optimizer.step (fp16 loss scaler's cur_scale) | r1_ds.train
    replace_gradient_reduction     | DeepSpeedEngine.buffered_allreduce_fallback (per engine) | r1_ds.parallel.comm_hook
    weights_only_loads             | torch.load while DeepSpeed (and we) read checkpoints | r1_ds.checkpoint
    pipeline_loss_fn               | PipelineModule.loss_fn for one eval_batch            | r1_ds.evaluation.during_training
"""

from __future__ import annotations

import contextlib
import pickle
import types
from collections.abc import Callable, Iterator

import torch

from ..precision import PrecisionError
from ..safe_load import UnsafeFileError, deepspeed_globals, unsafe_globals

PINNED_DEEPSPEED = "0.19.8"

__all__ = [
    "PINNED_DEEPSPEED",
    "DeepSpeedVersionError",
    "check_deepspeed_version",
    "disable_cpu_shm_comm",
    "install_loss_scale_policy",
    "needs_fp32_clip_patch",
    "patch_fp32_grad_clipping",
    "pipeline_loss_fn",
    "replace_gradient_reduction",
    "weights_only_loads",
]


class DeepSpeedVersionError(RuntimeError):
    """The installed DeepSpeed is not the version a patch was checked against."""


def check_deepspeed_version(patch: str, reverify: str) -> None:
    """Refuse to apply `patch` on a DeepSpeed other than PINNED_DEEPSPEED; the message names the patch and
    what to re-verify (`reverify`) before the pin in this file and pyproject.toml may move."""
    import deepspeed

    version = deepspeed.__version__
    if version.split("+")[0] != PINNED_DEEPSPEED:
        raise DeepSpeedVersionError(
            f"r1_ds patch {patch} was written for DeepSpeed {PINNED_DEEPSPEED}, but DeepSpeed {version} is installed. "
            f"Fix: install deepspeed=={PINNED_DEEPSPEED}, or re-verify {reverify} in DeepSpeed {version}, then update "
            "PINNED_DEEPSPEED in r1_ds/parallel/deepspeed_patches.py and the pin in pyproject.toml."
        )


# ----------------------------------------------------------------------------- process start-up


def disable_cpu_shm_comm() -> None:
    """Keep DeepSpeed's CPU shared-memory all-reduce op (`deepspeed_shm_comm`) from loading at
    `deepspeed.init_distributed`.

    Replaces: `deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"]`, which the CPU accelerator's comm backend
    reads before it builds and opens the op. Why: the op is a JIT build on first use, and every process then maps a
    66 MB /dev/shm file that DeepSpeed 0.19.8 never unlinks (`shared_close` is never called), so every run leaks
    RAM. Training never uses it (only `inference_all_reduce` does; gloo does our collectives). Call before
    `deepspeed.init_distributed`, on CPU only."""
    check_deepspeed_version(
        "disable_cpu_shm_comm",
        "that the CPU comm backend still checks "
        "deepspeed.ops.__compatible_ops__['deepspeed_shm_comm'] before loading the op",
    )
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


# ----------------------------------------------------------------------------- fp32 gradient clipping


def needs_fp32_clip_patch(engine) -> bool:
    """True where DeepSpeed clips through `clip_fp32_gradients` (fp32, no ZeRO, clipping on)."""
    return (
        engine.gradient_clipping() > 0.0
        and getattr(engine, "torch_autocast_z0_gradscaler", None) is None
        and not (engine.fp16_enabled() or engine.bfloat16_enabled() or engine.zero_optimization())
    )


def patch_fp32_grad_clipping(engine) -> None:
    """fp32 (ZeRO-0) gradient clipping that counts every stage's gradients and records the norm.

    Replaces: `engine.clip_fp32_gradients` on this engine instance (DeepSpeedEngine's, which calls
    `clip_grad_norm_(..., mpu=grid)`). Why: that path counts a parameter on a rank whose grid "model-parallel
    rank" is not 0 only when it is marked model-parallel. On a pipeline grid that rank is the position among
    all pipe x tensor ranks of the replica, so stages > 0 would drop out of the global norm and clip with the
    wrong factor (the pipeline parity test catches it). Here every stage counts its own parameters once:
    pipeline-tied copies (`ds_pipe_replicated`) are skipped, and tensor-replicated parameters are counted on
    tensor rank 0 only. It also keeps the norm for `engine.get_global_grad_norm()`, which DeepSpeed's fp32 path
    leaves empty. bf16 (BF16_Optimizer) and ZeRO compute the norm themselves and need neither (see
    `needs_fp32_clip_patch`). The grid is DeepSpeed's `mpu`: the pipeline's own, or the one a tensor x data run
    passes to `deepspeed.initialize` (there the model-parallel group is the tensor group); without one, every
    parameter is this rank's alone."""
    check_deepspeed_version(
        "patch_fp32_grad_clipping",
        "that DeepSpeedEngine._take_model_step still clips fp32 "
        "ZeRO-0 gradients through self.clip_fp32_gradients() and that get_global_grad_norm "
        "reads self._global_grad_norm",
    )
    from deepspeed import comm as dist

    grid = getattr(engine, "mpu", None)

    def clip_fp32_gradients(self):
        tensor_rank = grid.get_slice_parallel_rank() if grid is not None else 0
        params = [p for p in self.module.parameters() if p.grad is not None]
        counted = [
            p
            for p in params
            if not getattr(p, "ds_pipe_replicated", False)
            and (tensor_rank == 0 or getattr(p, "tensor_model_parallel", False))
        ]
        sq = torch.zeros(1, dtype=torch.float32, device=params[0].device if params else "cpu")
        for p in counted:
            sq += p.grad.detach().float().pow(2).sum()
        if grid is not None:
            dist.all_reduce(sq, group=grid.get_model_parallel_group())  # every stage and shard of this replica
        total = sq.sqrt()
        coef = torch.clamp(self.gradient_clipping() / (total + 1e-6), max=1.0)
        for p in params:
            p.grad.detach().mul_(coef.to(p.grad.dtype))
        self._global_grad_norm = float(total)
        return total

    engine.clip_fp32_gradients = types.MethodType(clip_fp32_gradients, engine)


# ----------------------------------------------------------------------------- fp16 loss scale


def _max_abs_grad(optimizer, module) -> float:
    """Largest |gradient| this rank holds right before the optimizer step (scaled, already reduced)."""

    tensors = []
    for group in getattr(optimizer, "fp16_groups", []) or []:  # FP16_Optimizer
        tensors += [p.grad for p in group if p.grad is not None]
    averaged = getattr(optimizer, "averaged_gradients", None)  # ZeRO stage 1/2
    if isinstance(averaged, dict):
        for grads in averaged.values():
            tensors += [g for g in grads if g is not None]
    if not tensors:
        tensors = [p.grad for p in module.parameters() if p.grad is not None]
    if not tensors:
        return 0.0
    return float(torch.stack([t.detach().abs().max().float() for t in tensors]).max())


def install_loss_scale_policy(engine, policy) -> None:
    """Set the fp16 loss scale by `policy` (`r1_ds.precision.ExponentLossScalePolicy`) instead of DeepSpeed's
    dynamic doubling and halving.

    Replaces: `engine.optimizer.step` on this optimizer instance with a wrapper that measures the largest scaled
    gradient before the step (max over all ranks, so every stage uses the same scale), runs the original step,
    then writes the policy's scale into `optimizer.loss_scaler.cur_scale` for the next step. Why: DeepSpeed has
    no hook for a loss-scale rule; its scaler reads `cur_scale` when it scales the next loss. The gradients are
    read where FP16_Optimizer (`fp16_groups`) and ZeRO 1/2 (`averaged_gradients`) keep them."""
    check_deepspeed_version(
        "install_loss_scale_policy",
        "that FP16_Optimizer keeps gradients in fp16_groups, "
        "ZeRO 1/2 in averaged_gradients, and that the loss scaler scales by loss_scaler.cur_scale",
    )
    from deepspeed import comm as dist

    opt = engine.optimizer
    scaler = getattr(opt, "loss_scaler", None)
    if scaler is None or not hasattr(scaler, "cur_scale"):
        raise PrecisionError(
            "loss_scale_policy needs fp16 with DeepSpeed's loss scaler (fp16.enabled=true); this "
            "engine has none. Fix: enable fp16 or remove precision.loss_scale_policy."
        )
    inner_step = opt.step

    def step(*args, **kwargs):
        m = torch.tensor(
            [_max_abs_grad(opt, engine.module)], dtype=torch.float32, device=next(engine.module.parameters()).device
        )
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        current = float(scaler.cur_scale)
        out = inner_step(*args, **kwargs)
        new = policy.update(float(m), current)
        if new is not None:
            scaler.cur_scale = new
        return out

    opt.step = step


# ----------------------------------------------------------------------------- data-parallel gradient reduction


def replace_gradient_reduction(engine, reduce: Callable[[int], object]) -> Callable:
    """Route DeepSpeed's data-parallel gradient reduction through `reduce(elements_per_buffer)`; returns the
    engine's original bound method (`reduce` calls it for warm-up and dense fallbacks).

    Replaces: `engine.buffered_allreduce_fallback` on this engine instance. Why: DeepSpeed 0.19.8 has no
    communication-hook API, and every configuration the compression hook supports (plain engine and
    PipelineEngine at ZeRO-0, BF16_Optimizer) reduces data-parallel gradients there, once per optimizer step at
    the accumulation boundary, before clipping. A call with its own gradient list (`grads=...`) is not
    DeepSpeed's reduction path and goes to the original."""
    check_deepspeed_version(
        "replace_gradient_reduction",
        "that DeepSpeedEngine.allreduce_gradients (and "
        "PipelineEngine's, and BF16_Optimizer's path) still reduce data-parallel gradients through "
        "self.buffered_allreduce_fallback(grads=None, elements_per_buffer=...)",
    )
    stock = engine.buffered_allreduce_fallback

    def buffered_allreduce_fallback(self, grads=None, elements_per_buffer=500000000):
        if grads is not None:  # a caller with its own gradient list (not DeepSpeed's reduction path): leave it be
            return stock(grads=grads, elements_per_buffer=elements_per_buffer)
        return reduce(elements_per_buffer)

    engine.buffered_allreduce_fallback = types.MethodType(buffered_allreduce_fallback, engine)
    return stock


@contextlib.contextmanager
def pipeline_loss_fn(module, loss_fn: Callable) -> Iterator[None]:
    """Inside the block, the pipeline's last stage computes its loss with `loss_fn`; the trained loss
    function is back afterwards, also when the block raises.

    Replaces: `module.loss_fn` of the PipelineModule (the function it was built with). Why:
    `PipelineEngine.eval_batch` has no loss argument; its last stage calls `self.module.loss_fn(outputs, labels)`,
    looked up per micro-batch. The held-out loss during training is plain cross entropy, without the label
    smoothing the run trains with."""
    check_deepspeed_version(
        "pipeline_loss_fn",
        "that PipelineEngine.eval_batch's last stage computes its loss with self.module.loss_fn(outputs, labels)",
    )
    trained = module.loss_fn
    module.loss_fn = loss_fn
    try:
        yield
    finally:
        module.loss_fn = trained


# ----------------------------------------------------------------------------- checkpoint reads


@contextlib.contextmanager
def weights_only_loads(trusted: bool = False) -> Iterator[None]:
    """While active, every `torch.load` in this process reads with weights_only=True and the DeepSpeed
    allowlist (`r1_ds.safe_load.deepspeed_globals`), whatever its caller asked for; a file that names another
    callable raises UnsafeFileError (naming the file) before anything of it runs.

    Replaces: the `torch.load` attribute of the torch module, for the duration of the block. Why: DeepSpeed's
    checkpoint reads (`engine.load_checkpoint`, pipeline layer files, ZeRO shards, universal folders,
    `zero_to_fp32`) call `torch.load(..., weights_only=False)` and take no loader argument; they look `torch.load`
    up at call time, so this covers them. `trusted`: no change (plain unpickling, for checkpoints the user
    vouches for)."""
    if trusted:
        yield
        return
    check_deepspeed_version(
        "weights_only_loads",
        "that DeepSpeed's checkpoint reads still call torch.load through "
        "the torch module and that r1_ds.safe_load.deepspeed_globals lists every class its "
        "checkpoints pickle",
    )
    original = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)  # weights_only refuses a custom pickle module
        with torch.serialization.safe_globals(deepspeed_globals()):
            try:
                return original(f, *args, **kwargs)
            except pickle.UnpicklingError as err:
                if "Weights only load failed" not in str(err):
                    raise
                names = unsafe_globals(f) if isinstance(f, str) else []
                raise UnsafeFileError(f, names or [str(err).split("\n")[0]]) from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original
