"""Reading checkpoint files without running code from them.

A `.pt` file is a pickle: `torch.load(weights_only=False)` calls whatever callables the file names, so a
crafted checkpoint runs its payload on load. Every read of a checkpoint here, ours and DeepSpeed's own
(`engine.load_checkpoint`, pipeline layer files, ZeRO shards, universal folders and `zero_to_fp32`, which
all call `torch.load(..., weights_only=False)` through the `torch` module), goes through
`torch.load(weights_only=True)`: tensors, containers and plain numbers, plus the few DeepSpeed classes that
its checkpoints hold (`DEEPSPEED_GLOBALS`, data-only classes whose reconstruction runs no code of the
file's choosing). Anything else is refused before it is built. `trusted=True` (`--trust-checkpoint`,
`checkpoint.trust: true`) turns the guard off for a checkpoint whose origin the user vouches for.
This module holds the allowlist and the scan; the `torch.load` wrapper that applies them is
`r1_ds.parallel.deepspeed_patches.weights_only_loads`.
"""

from __future__ import annotations

import pickle

import torch


def deepspeed_globals() -> list:
    """The non-builtin classes DeepSpeed 0.19.8 pickles into checkpoints: the ZeRO stage enum and fragment
    addresses (ZeRO / bf16 optimizer shards), the fp16 loss scalers (their state is plain numbers) and the
    sub-parameter shapes of universal checkpoints (a dataclass of lists and ints)."""
    from deepspeed.checkpoint.universal_checkpoint import SubparamShape
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler, SubparamShape]


def allowed_names() -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in deepspeed_globals()}


class UnsafeFileError(pickle.UnpicklingError):
    """A checkpoint file names Python callables outside the allowlist (it could run code)."""

    def __init__(self, path: str, names: list[str]):
        self.path, self.names = str(path), names
        super().__init__(
            f"{path} holds Python objects outside the allowlist of what r1-ds and DeepSpeed store "
            f"({', '.join(names[:5])}); loading it would run code named by the file"
        )


def unsafe_globals(path: str) -> list[str]:
    """Globals that `path` (a zip-format .pt) names beyond the weights-only set and our allowlist, read from
    its pickle without building anything. Raises on a file that is not a readable .pt (truncated, garbage)."""
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    allowed = allowed_names()
    return [n for n in names if n not in allowed]
