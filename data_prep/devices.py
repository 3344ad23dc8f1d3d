"""Pick the torch device for model-backed filters (imports torch only when called)."""

from __future__ import annotations

from data_prep.errors import PrepError


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda``/``cuda:N``/``cpu`` are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PrepError(f"--device {device}: no CUDA GPU is visible to torch; pass --device cpu (or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise PrepError(f"--device {device}: must be auto, cpu, cuda or cuda:N")
    return device
