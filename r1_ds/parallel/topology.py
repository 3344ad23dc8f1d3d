"""Pipe x tensor x data layout: every rank arithmetic of r1_ds lives here (torchtitan's ParallelDims), and
every check that a model can be cut into a layout (`ParallelDims.check_model`, `check_tensor_parallel`).

Ranks are laid out like DeepSpeed's `PipeModelDataParallelTopology(num_pp, num_mp, num_dp)` (axes
pipe, data, model; the last varies fastest):

    rank = (pipe_rank * data + data_rank) * tensor + tensor_rank

so tensor-parallel peers are neighbours (one node, fast links), data-parallel peers come next
(gradient all-reduce), and pipeline stages are furthest apart (point-to-point activations only).
"""

from __future__ import annotations

from dataclasses import dataclass


class LayoutError(ValueError):
    """The parallel layout does not fit the world size or the model; the message shows the numbers."""


class TensorParallelError(ValueError):
    """The tensor size, the model and the plan do not fit; the message names the input, the rule and a fix."""


@dataclass(frozen=True)
class RankCoords:
    """Where one rank sits in the grid."""

    pipe: int  # pipeline stage, 0 = holds the embedding
    data: int  # data-parallel replica: which slice of every global batch this rank reads
    tensor: int  # tensor-parallel shard index inside a stage


@dataclass(frozen=True)
class ParallelDims:
    """Sizes of the three axes; `pipe * tensor * data` equals the world size."""

    pipe: int = 1  # pipeline stages (DeepSpeed PipelineEngine when > 1)
    tensor: int = 1  # tensor-parallel shards per stage (r1_ds.parallel.tensor_parallel, R1_TP_PLAN)
    data: int = 1  # data-parallel replicas

    @classmethod
    def build(cls, world_size: int, *, pipe: int = 1, tensor: int = 1, data: int = 0) -> ParallelDims:
        """The layout for `world_size` ranks; `data=0` means "whatever is left": world / (pipe * tensor)."""
        for name, v in (("pipe", pipe), ("tensor", tensor)):
            if not isinstance(v, int) or v < 1:
                raise LayoutError(
                    f"parallel.{name}={v!r}: must be an integer >= 1. Fix: set parallel.{name} to 1 or more."
                )
        if not isinstance(data, int) or data < 0:
            raise LayoutError(
                f"parallel.data={data!r}: must be an integer >= 1, or 0 for world / (pipe * tensor). "
                "Fix: set parallel.data to 0."
            )
        if data == 0:
            if world_size % (pipe * tensor):
                raise LayoutError(
                    f"parallel layout pipe={pipe} x tensor={tensor} = {pipe * tensor} ranks per replica does not divide "
                    f"the world size {world_size}. Fix: launch a multiple of {pipe * tensor} processes, or choose pipe "
                    f"and tensor whose product divides {world_size}."
                )
            data = world_size // (pipe * tensor)
        dims = cls(pipe=pipe, tensor=tensor, data=data)
        if dims.world_size != world_size:
            raise LayoutError(
                f"parallel layout pipe={pipe} x tensor={tensor} x data={data} = {dims.world_size} ranks does not match "
                f"the world size {world_size}. Fix: launch {dims.world_size} processes, or set parallel.data=0 to use "
                f"data={world_size // (pipe * tensor) if world_size % (pipe * tensor) == 0 else '?'}."
            )
        return dims

    @property
    def world_size(self) -> int:
        return self.pipe * self.tensor * self.data

    @property
    def pipeline_enabled(self) -> bool:
        return self.pipe > 1

    def coords(self, rank: int) -> RankCoords:
        """Grid position of a global rank."""
        if not 0 <= rank < self.world_size:
            raise LayoutError(f"rank {rank} is outside the world of {self.world_size} ranks")
        tensor = rank % self.tensor
        data = (rank // self.tensor) % self.data
        pipe = rank // (self.tensor * self.data)
        return RankCoords(pipe=pipe, data=data, tensor=tensor)

    def rank(self, *, pipe: int, data: int, tensor: int = 0) -> int:
        """Global rank at a grid position (inverse of `coords`)."""
        return (pipe * self.data + data) * self.tensor + tensor

    def topology(self):
        """The DeepSpeed topology with the same rank layout (lazy import: only the trainer needs DeepSpeed)."""
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

        return PipeModelDataParallelTopology(num_pp=self.pipe, num_mp=self.tensor, num_dp=self.data)

    def check_model(
        self,
        *,
        num_hidden_layers: int,
        level_heads,
        hidden_size: int | None = None,
        intermediate_size: int | None = None,
        vocab_size: int | None = None,
    ) -> None:
        """Refuse layouts the model cannot be cut into: every stage needs a decoder layer, and every
        size that tensor parallelism splits (each attention level's heads; with the sizes given, also
        hidden_size, intermediate_size and vocab_size) must divide evenly over the tensor shards."""
        if self.pipe > num_hidden_layers:
            raise LayoutError(
                f"parallel.pipe={self.pipe} stages but the model has num_hidden_layers={num_hidden_layers}: every "
                f"stage needs at least one decoder layer. Fix: use parallel.pipe <= {num_hidden_layers} or a deeper "
                "model."
            )
        for level, heads in enumerate(level_heads, start=1):
            if heads % self.tensor:
                raise LayoutError(
                    f"parallel.tensor={self.tensor} does not divide the {heads} heads of attention level L{level} "
                    f"(level_heads={list(level_heads)}). Fix: choose a tensor size that divides every level's head "
                    "count."
                )
        sizes = {"hidden_size": hidden_size, "intermediate_size": intermediate_size, "vocab_size": vocab_size}
        if self.tensor > 1 and all(v is not None for v in sizes.values()):
            try:
                check_tensor_parallel(tensor=self.tensor, level_heads=level_heads, **sizes)
            except TensorParallelError as err:
                raise LayoutError(f"parallel.tensor={self.tensor} ({self.describe()}): {err}") from None

    def describe(self) -> str:
        return f"pipe={self.pipe} x tensor={self.tensor} x data={self.data} = {self.world_size} ranks"


def check_tensor_parallel(
    *, tensor: int, level_heads, hidden_size: int, intermediate_size: int, vocab_size: int
) -> None:
    """Every size that tensor parallelism splits must be divisible by the tensor size `tensor`."""
    if not isinstance(tensor, int) or tensor < 1:
        raise TensorParallelError(
            f"tensor parallel size {tensor!r}: must be an integer >= 1. Fix: set tensor to 1, "
            "2, 4, ... (a divisor of every level's head count)"
        )
    if tensor == 1:
        return
    problems = []
    for i, h in enumerate(level_heads):
        if h % tensor:
            problems.append(
                f"level {i + 1} has {h} heads (level_heads={list(level_heads)}), not divisible by "
                f"tensor={tensor}: each level's heads are split across tensor ranks"
            )
    if hidden_size % tensor:
        problems.append(f"hidden_size={hidden_size} is not divisible by tensor={tensor}")
    if intermediate_size % tensor:
        problems.append(
            f"intermediate_size={intermediate_size} is not divisible by tensor={tensor} (the SwiGLU hidden is split)"
        )
    if vocab_size % tensor:
        problems.append(
            f"vocab_size={vocab_size} is not divisible by tensor={tensor} (embedding and LM head "
            f"are split by vocabulary); pad it to a multiple of {tensor} (64 or 128 is usual)"
        )
    if problems:
        divisors = [
            t
            for t in range(1, max(level_heads) + 1)
            if all(h % t == 0 for h in level_heads)
            and hidden_size % t == 0
            and intermediate_size % t == 0
            and vocab_size % t == 0
        ]
        raise TensorParallelError(
            "tensor parallel size does not fit the model:\n  - "
            + "\n  - ".join(problems)
            + f"\nFix: use a tensor size in {divisors} or change the model sizes named above."
        )
