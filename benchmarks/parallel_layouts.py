"""Tokens/s of R1 under parallel layouts on one GPU host (default: the 1.3B preset on 4 GPUs).

    python benchmarks/parallel_layouts.py                      # all layouts, prints a table last
    python benchmarks/parallel_layouts.py --layouts 1x1x1 1x1x4 --out $OUT/a.json
    python benchmarks/parallel_layouts.py --layouts 2x1x2 1x2x2 2x2x1 --baseline $OUT/a.json

Each layout (pipe x tensor x data) runs in its own `torchrun` job (a fresh NCCL world, so one layout
cannot slow the next) through the same code the trainer uses: `apply_tensor_parallel` (the declared
plan), `build_pipeline`, DeepSpeed bf16 + ZeRO-1. Every layout trains the same global batch
(`--global-batch` sequences of `--seq-len` tokens) per optimizer step, on synthetic tokens; tokens/s
is timed over `--steps` steps after `--warmup` steps (which include FlexAttention's compilation).
Scaling efficiency = tokens/s / (GPUs x tokens/s of one GPU).

Writes $OUT/parallel_layouts.json (or --out) with every measurement and the settings; the table is
the last thing printed. A CPU smoke run (gloo, tiny preset): add `--device cpu --preset tiny`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LAYOUTS = ["1x1x1", "1x1x4", "2x1x2", "1x2x2", "2x2x1"]  # pipe x tensor x data


def parse_layout(text: str) -> tuple[int, int, int]:
    try:
        pipe, tensor, data = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"layout {text!r}: write it as PIPExTENSORxDATA, e.g. 2x1x2") from None
    return pipe, tensor, data


def arguments(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", nargs="+", default=DEFAULT_LAYOUTS, help="PIPExTENSORxDATA, one job each")
    p.add_argument("--preset", default="1.3b", help="R1 model preset")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--global-batch", type=int, default=32, help="sequences per optimizer step, every layout")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per GPU per forward")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first (compilation)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--attn", default="auto", help="attention implementation; auto: flex_attention on cuda")
    p.add_argument("--activation-checkpointing", type=int, default=0, help="recompute every N decoder layers")
    p.add_argument("--timeout", type=int, default=480, help="seconds per layout")
    p.add_argument(
        "--baseline",
        default=None,
        help="a parallel_layouts.json of an earlier call whose 1-GPU result is the scaling baseline "
        "(to split the layouts over several calls of limited length)",
    )
    p.add_argument("--out", default=None, help="JSON path (default $OUT/parallel_layouts.json)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--layout", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- one layout (each rank)


def ds_config(args, data: int, pipe: int) -> dict:
    per_step = args.micro_batch * data
    if args.global_batch % per_step:
        raise SystemExit(
            f"--global-batch {args.global_batch} is not a multiple of micro-batch {args.micro_batch} x "
            f"data {data} = {per_step}; choose sizes that divide"
        )
    cfg = {
        "train_batch_size": args.global_batch,
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": args.global_batch // per_step,
        "gradient_clipping": 1.0,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": 1e-4, "betas": [0.9, 0.95], "weight_decay": 0.1, "torch_adam": True},
        },
        "zero_optimization": {"stage": 1},
        "bf16": {"enabled": True},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if pipe > 1:
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}  # bf16 + pipeline: DeepSpeed's BF16_Optimizer path
    return cfg


def worker(args) -> None:
    import deepspeed
    import torch
    from deepspeed import comm as dist
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid

    from r1_ds.flops import flops_per_token, peak_flops
    from r1_ds.model import R1Config, R1ForCausalLM
    from r1_ds.parallel.pipeline import build_pipeline
    from r1_ds.parallel.tensor_parallel import apply_tensor_parallel, tensor_parallel_group
    from r1_ds.parallel.topology import ParallelDims

    pipe, tensor, data = parse_layout(args.layout)
    deepspeed.init_distributed(dist_backend="nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dims = ParallelDims.build(world, pipe=pipe, tensor=tensor, data=data)
    coords = dims.coords(rank)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    config = R1Config.from_preset(args.preset, max_position_embeddings=max(args.seq_len, 2048))
    dims.check_model(num_hidden_layers=config.num_hidden_layers, level_heads=config.level_heads)
    torch.manual_seed(0)
    with device:
        model = R1ForCausalLM(config)
    model.set_attn_implementation(
        args.attn if args.attn != "auto" else "flex_attention" if device.type == "cuda" else "eager"
    )
    ds = ds_config(args, data, pipe)
    if pipe > 1:
        module = build_pipeline(model, dims, activation_checkpoint_interval=args.activation_checkpointing)
        mpu = None
    else:
        mpu = PipelineParallelGrid(topology=dims.topology())  # DeepSpeed's grid as the tensor x data mpu
        apply_tensor_parallel(model, tensor_parallel_group(dims))
        if args.activation_checkpointing:
            model.gradient_checkpointing_enable()
        module = model
    engine, *_ = deepspeed.initialize(
        model=module, model_parameters=[p for p in module.parameters()], config=ds, mpu=mpu
    )
    gas = engine.gradient_accumulation_steps()

    def micro_batches(step: int):
        # the same tokens on every tensor rank and pipeline stage of a data replica, different per replica
        g = torch.Generator().manual_seed(step * 1000 + coords.data)
        for _ in range(gas):
            ids = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len), generator=g).to(device)
            yield ids, ids

    def one_step(step: int) -> float:
        if pipe > 1:
            return float(engine.train_batch(data_iter=micro_batches(step)))
        losses = []
        for ids, labels in micro_batches(step):
            loss = engine(input_ids=ids, labels=labels).loss
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach())
        return torch.stack(losses).float().mean().item()  # one device sync per step

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()

    for step in range(args.warmup):
        one_step(step)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = float("nan")
    for step in range(args.warmup, args.warmup + args.steps):
        loss = one_step(step)
    sync()
    elapsed = time.perf_counter() - t0
    peak_mem = torch.tensor(
        [torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0], device=device
    )
    dist.all_reduce(peak_mem, op=dist.ReduceOp.MAX)
    if rank == 0:
        tokens_per_s = args.global_batch * args.seq_len * args.steps / elapsed
        fpt = flops_per_token(config, args.seq_len)
        peak = peak_flops("bf16") if device.type == "cuda" else None
        result = {
            "layout": args.layout,
            "pipe": pipe,
            "tensor": tensor,
            "data": data,
            "gpus": world,
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_gpu": tokens_per_s / world,
            "mfu": fpt * tokens_per_s / (peak * world) if peak else None,
            "step_s": elapsed / args.steps,
            "grad_accum": gas,
            "peak_mem_gib": float(peak_mem.item()),
            "loss": loss,
            "preset": args.preset,
            "seq_len": args.seq_len,
            "global_batch": args.global_batch,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        }
        with open(args.result, "w") as f:
            json.dump(result, f)


# ----------------------------------------------------------------------------- driver


def run_layout(args, layout: str) -> dict:
    pipe, tensor, data = parse_layout(layout)
    n = pipe * tensor * data
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        result_path = tmp.name
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        os.path.abspath(__file__),
        "--worker",
        "--layout",
        layout,
        "--result",
        result_path,
        "--preset",
        args.preset,
        "--seq-len",
        str(args.seq_len),
        "--global-batch",
        str(args.global_batch),
        "--micro-batch",
        str(args.micro_batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
        "--attn",
        args.attn,
        "--activation-checkpointing",
        str(args.activation_checkpointing),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    if args.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=args.timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t0
    if rc == 0 and os.path.getsize(result_path):
        with open(result_path) as f:
            result = json.load(f)
    else:
        result = {"layout": layout, "pipe": pipe, "tensor": tensor, "data": data, "gpus": n, "error": f"exit {rc}"}
    os.unlink(result_path)
    result["job_wall_s"] = wall
    return result


def table(results: list[dict]) -> str:
    base = next((r for r in results if r.get("gpus") == 1 and "tokens_per_s" in r), None)
    head = (
        f"{'layout (pipe x tensor x data)':<30}{'GPUs':>5}{'tokens/s':>12}{'per GPU':>10}{'scaling':>9}"
        f"{'MFU':>7}{'step s':>8}{'peak GiB':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        name = f"{r['pipe']} x {r['tensor']} x {r['data']}"
        if "tokens_per_s" not in r:
            lines.append(f"{name:<30}{r['gpus']:>5}  {r['error']}")
            continue
        eff = r["tokens_per_s"] / (r["gpus"] * base["tokens_per_s"]) if base else None
        r["scaling_efficiency"] = eff
        eff_s = f"{eff:.0%}" if eff is not None else "-"
        mfu_s = f"{r['mfu']:.0%}" if r.get("mfu") else "-"
        lines.append(
            f"{name:<30}{r['gpus']:>5}{r['tokens_per_s']:>12,.0f}{r['tokens_per_s_per_gpu']:>10,.0f}"
            f"{eff_s:>9}{mfu_s:>7}{r['step_s']:>8.2f}{r['peak_mem_gib']:>10.1f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = arguments(argv)
    if args.worker:
        worker(args)
        return 0
    for layout in args.layouts:
        parse_layout(layout)
    results = []
    if args.baseline:
        with open(args.baseline) as f:
            earlier = [r for r in json.load(f)["results"] if r.get("gpus") == 1 and "tokens_per_s" in r]
        if not earlier:
            raise SystemExit(f"--baseline {args.baseline}: holds no successful 1-GPU result; run layout 1x1x1 first")
        results.append({**earlier[0], "from": args.baseline})
    for layout in args.layouts:
        print(f"== layout {layout} (pipe x tensor x data)", flush=True)
        results.append(run_layout(args, layout))
        print(json.dumps(results[-1]), flush=True)
    text = table(results)
    out = args.out or os.path.join(os.environ.get("OUT", "."), "parallel_layouts.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "layout", "result")}
    with open(out, "w") as f:
        json.dump({"settings": settings, "results": results, "table": text}, f, indent=2)
    print(f"wrote {out}\n")
    print(text)
    return 0 if all("tokens_per_s" in r for r in results) else 1


if __name__ == "__main__":
    from r1_ds.distributed import exit_process  # a worker rank tears its process group down, then ends (see there)

    exit_process(main())
