"""Stop a run whose loss or gradient norm stopped being finite, before it saves or exports bad weights.

Each step's loss (and the gradient norm, where DeepSpeed computed one) is turned into a device-side flag
without waiting for the device; every `every` steps, and always before a checkpoint is written, the flags
are gathered in one all-reduce over the world and the first bad step is reported. An fp16 run with a
dynamic loss scale is the exception for the gradient norm: an overflowing step is DeepSpeed's to skip
(it lowers the scale), so only its loss counts there.
"""

from __future__ import annotations

import math

import torch


class DivergenceError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the message names the step and the last good checkpoint."""


class FiniteCheck:
    def __init__(self, *, every: int, skips_overflow: bool):
        self.every, self.skips_overflow = every, skips_overflow
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, 1.0 if that step was bad)

    def observe(self, step: int, loss: torch.Tensor, grad_norm) -> None:
        """Record step `step` (1-based, the number of optimizer steps done); no device sync."""
        bad = ~torch.isfinite(loss.detach().float().reshape(-1)).all()
        if grad_norm is not None and not self.skips_overflow:
            if isinstance(grad_norm, torch.Tensor):
                bad = bad | ~torch.isfinite(grad_norm.detach().float().reshape(-1)).all().to(bad.device)
            elif not math.isfinite(float(grad_norm)):
                bad = torch.ones_like(bad)
        self._pending.append((step, bad.float()))

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def first_bad_step(self) -> int | None:
        """Collective over the world: the first observed step whose loss or grad norm was not finite on any
        rank, or None; clears what was observed."""
        if not self._pending:
            return None
        from deepspeed import comm as dist

        steps = [s for s, _ in self._pending]
        flags = torch.stack([f.reshape(()) for _, f in self._pending])
        self._pending.clear()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad = [s for s, f in zip(steps, flags.tolist()) if f > 0]
        return bad[0] if bad else None


def divergence_message(step: int, *, last_good: str | None, ckpt_dir: str) -> str:
    where = (
        f"the last good checkpoint is {last_good}"
        if last_good
        else f"no checkpoint was saved before it (in {ckpt_dir})"
    )
    return (
        f"training diverged: the loss or gradient norm is not finite at step {step}; the run stops without "
        f"saving these weights, and "
        f"{where}. Fix: resume from it with a lower learning rate (--lr), a longer warm-up (--warmup-steps) or "
        "gradient clipping, or check the data around that step."
    )
