"""`python -m r1_ds.train`, then a probe of the trained model: for the 3D training tests.

    torchrun --nproc_per_node 4 -m tests.train_probe <the arguments of python -m r1_ds.train>

Runs the real entry point, `r1_ds.train.main` (argument parsing, settings, launch detection,
training, checkpoints), keeps the engine it trains, and then has every rank write the trained
model's logits of `probe_ids()` to `<output_dir>/probe/rank<R>.pt` (`None` on ranks that hold no
logits: pipeline stages before the last). Without a pipeline the engine is called directly; with one,
`engine.eval_batch`. With tensor parallelism each rank's logits are its vocabulary shard (B, T, V / tensor).

Like r1_ds/local_ranks.py, it switches off DeepSpeed's CPU shared-memory op (never used by training; it would
be built on first use and leak a /dev/shm file per rank and port).
"""

from __future__ import annotations

import os
import sys

import torch


def probe_ids() -> torch.Tensor:
    return torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(123))


def probe_logits(engine) -> torch.Tensor | None:
    """The trained model's logits of `probe_ids()` on this rank (None on pipeline stages before the last)."""
    ids = probe_ids()
    if getattr(engine, "is_pipe_parallel", False):
        result = engine.eval_batch(iter([(ids, ids)]), return_logits=True, num_micro_batches=1)
        return result[1].detach().clone() if engine.is_last_stage() else None
    engine.module.eval()
    with torch.no_grad():
        return engine.module(input_ids=ids.to(engine.device)).logits.detach().cpu().clone()


def probe(engine, out_dir: str) -> None:
    logits = probe_logits(engine)
    os.makedirs(os.path.join(out_dir, "probe"), exist_ok=True)
    torch.save(logits, os.path.join(out_dir, "probe", f"rank{os.environ.get('RANK', '0')}.pt"))


def main(argv: list[str]) -> int:
    from r1_ds.parallel.deepspeed_patches import disable_cpu_shm_comm

    disable_cpu_shm_comm()
    import r1_ds.train as entry

    train = entry.train

    def train_then_probe(cfg):  # before run() tears the process groups down: the probe needs them
        engine = train(cfg)
        probe(engine, cfg.output_dir)
        return engine

    entry.train = train_then_probe  # run() looks `train` up in the module at call time
    return entry.main(argv)


if __name__ == "__main__":
    from r1_ds.distributed import exit_process

    exit_process(main(sys.argv[1:]))
