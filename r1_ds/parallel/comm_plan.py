"""The bucket plan of the compressed reducer: which gradients are compressed together, and which go to DeepSpeed's
dense all-reduce. Every replica of a parameter (data-parallel peers, tensor-replicated copies, pipeline-tied
copies) must see bit-identical compressor input, so replicated, tensor-sharded and each tied weight get a bucket
of their own (a test shows that one flat bucket lets tied copies drift apart)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Bucket", "pieces", "plan_buckets"]


@dataclass
class Bucket:
    """Parameters compressed together."""

    key: str  # "float32/rep/-", "float32/tp/-", "float32/rep/tied:embed.weight", or "dense"
    params: list  # in model order
    numel: int
    dense: bool  # reduced by DeepSpeed's own all-reduce (1-D params when dense_1d)


def plan_buckets(
    pairs, *, dense_1d: bool, tied: dict[int, str], is_tensor_parallel: Callable[[torch.nn.Parameter], bool]
) -> list[Bucket]:
    """Buckets, in order of first appearance, for (parameter, gradient) `pairs`. `tied`: id(parameter) -> a name
    ("tied:embed.weight") for the pipeline's tied weights; `is_tensor_parallel(p)`: p is a tensor shard."""
    buckets: dict[str, Bucket] = {}
    for p, g in pairs:
        if dense_1d and p.dim() <= 1:
            key, dense = "dense", True
        else:
            tp = "tp" if is_tensor_parallel(p) else "rep"
            key, dense = f"{str(g.dtype).replace('torch.', '')}/{tp}/{tied.get(id(p), '-')}", False
        b = buckets.setdefault(key, Bucket(key, [], 0, dense))  # dict keeps first-appearance order
        b.params.append(p)
        b.numel += p.numel()
    return list(buckets.values())


def pieces(flat: torch.Tensor, grads: list[torch.Tensor]):
    """(grad, its slice of the flat bucket buffer) pairs; the slices are views in the bucket's order."""
    return zip(grads, flat.split([g.numel() for g in grads]))
