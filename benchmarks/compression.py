"""Compressed vs dense data-parallel gradient reduction on GPUs: step time, bytes on the wire, loss.

One launch measures one transport; run it twice on 4 H200s (kind nvidia-h200-x4):

    torchrun --nproc_per_node 4 benchmarks/compression.py --model llama-350m
    NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1 NCCL_SOCKET_IFNAME=lo \\
        torchrun --nproc_per_node 4 benchmarks/compression.py --model llama-350m

Each launch trains the same model from the same seed on the same synthetic data once per run in --runs:
  dense      DeepSpeed's own all-reduce (the hook installed but held in warmup, so bytes are counted alike)
  leader     r1_compression mode "leader" (top-5% positions from a rotating rank, int8 reduce-scatter + all-gather)
  allgather  r1_compression mode "allgather" (every rank's own top-5%, all-gathered; bytes grow with DP size)
  auto       "leader" with auto_fallback: it times both reductions after warmup and keeps the faster one
The transport label is taken from NCCL_P2P_DISABLE (socket) unless --label is given. Prints a Markdown table last;
writes JSON to $OUT/compression_<label>.json when OUT is set (and to --json). A CPU smoke run:
    torchrun --nproc_per_node 2 benchmarks/compression.py --model llama-tiny --steps 12 --warmup 3 --seq 64
Model: a Hugging Face LlamaForCausalLM built from config (llama-350m / llama-1.3b), or the R1 preset (r1-350m,
r1-1.3b). bf16 weights, BF16_Optimizer (ZeRO-1 with fp32 gradient accumulation), the
dense all-reduce in fp32 (--dense-comm) so that bytes compare with a dense fp32 all-reduce.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

LLAMA_SIZES = {  # name: (hidden, layers, heads, intermediate)
    "llama-tiny": (64, 2, 4, 176),
    "llama-350m": (1024, 24, 16, 2816),
    "llama-1.3b": (2048, 24, 16, 5632),
}


def build_model(name: str, seq: int) -> torch.nn.Module:
    """A freshly initialised causal LM: forward(input_ids=..., labels=...) returns .loss."""
    if name.startswith("r1-"):
        from r1_ds.model import R1Config, R1ForCausalLM  # imported only for the r1-* models

        return R1ForCausalLM(R1Config.from_preset(name[3:]))
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, inter = LLAMA_SIZES[name]
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=max(seq, 2048),
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def synthetic_tokens(rows: int, seq: int, vocab: int, seed: int, device, active: int = 4096) -> torch.Tensor:
    """(rows, seq) tokens of a sparse Markov language over the first `active` ids: each token has 4 successors (a
    fixed table) with probabilities 0.6/0.2/0.15/0.05, so the loss can fall from ln(vocab) to about 1.1 nats within
    a few hundred steps; cheap to sample on the GPU."""
    active = min(active, vocab)
    succ = torch.randint(active, (active, 4), generator=torch.Generator().manual_seed(0)).to(device)  # same everywhere
    g = torch.Generator().manual_seed(seed)
    choice = (
        torch.multinomial(torch.tensor([0.6, 0.2, 0.15, 0.05]), rows * seq, replacement=True, generator=g)
        .view(rows, seq)
        .to(device)
    )
    toks = torch.empty(rows, seq, dtype=torch.long, device=device)
    toks[:, 0] = torch.randint(active, (rows,), generator=g).to(device)
    for t in range(1, seq):
        toks[:, t] = succ[toks[:, t - 1], choice[:, t]]
    return toks


def bus_bandwidth(device, mbytes: int = 256, iters: int = 5) -> float:
    """NCCL-style all-reduce bus bandwidth (GB/s) of the world group, for the record."""
    import deepspeed.comm as dist

    world = dist.get_world_size()
    x = torch.ones(mbytes * 2**20 // 4, dtype=torch.float32, device=device)
    dist.all_reduce(x)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x)
    sync(device)
    seconds = (time.perf_counter() - t0) / iters
    return x.numel() * 4 / seconds * 2 * (world - 1) / world / 1e9


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def section_for(run: str, args) -> dict:
    """The r1_compression section of one run; `timing` on: the table reports device time per reduction."""
    base = {
        "enabled": True,
        "topk_ratio": args.topk_ratio,
        "bits": 8,
        "error_feedback": True,
        "selection": args.selection,
        "warmup_steps": args.warmup,
        "auto_fallback": False,
        "timing": True,
    }
    if run == "dense":
        return dict(base, warmup_steps=10**9)  # installed for the byte counts, never leaves dense warmup
    if run == "auto":
        return dict(base, mode="leader", auto_fallback=True, probe_steps=args.probe_steps)
    return dict(base, mode=run)


def run_one(run: str, args, device, data: torch.Tensor, held_out: torch.Tensor) -> dict:
    import deepspeed
    import deepspeed.comm as dist

    from r1_ds.parallel.comm_hook import install_compression
    from r1_ds.parallel.compression_config import compression_config

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: seconds instead of a minute for 1.3B on the host
        model = build_model(args.model, args.seq)
    config = {
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True},
        "data_types": {"grad_accum_dtype": "fp32"},
        "zero_optimization": {"stage": 1},
        "communication_data_type": args.dense_comm,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": args.lr, "betas": [0.9, 0.95], "weight_decay": 0.1, "torch_adam": True},
        },
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
        "r1_compression": section_for(run, args),
    }
    ds, compression = compression_config(config)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    reducer = install_compression(engine, compression)
    params = sum(p.numel() for p in model.parameters())
    losses, step_s, stats = [], [], []
    for step in range(args.steps):
        batch = data[step]
        sync(device)
        t0 = time.perf_counter()
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        sync(device)
        step_s.append(time.perf_counter() - t0)
        losses.append(loss.item())
        stats.append(reducer.last_stats())
    engine.eval()
    with torch.no_grad():
        eval_loss = torch.stack([engine(input_ids=b, labels=b).loss.float() for b in held_out]).mean()
    dist.all_reduce(eval_loss)  # every replica holds the same weights; averaging is only a guard
    eval_loss = eval_loss.item() / dist.get_world_size()
    last = torch.tensor(losses[-5:], device=device).mean()
    dist.all_reduce(last)
    window = range(args.measure_from, args.steps)
    out = {
        "run": run,
        "params": params,
        "section": config["r1_compression"],
        "step_ms": 1e3 * sum(step_s[i] for i in window) / len(window),
        "reduce_ms": 1e3 * sum(stats[i]["reduce_s"] for i in window) / len(window),
        "compress_ms": 1e3 * sum(stats[i]["compress_s"] for i in window) / len(window),
        "bytes_sent": sum(stats[i]["bytes_sent"] for i in window) / len(window),
        "payload_bytes": sum(stats[i]["payload_bytes"] for i in window) / len(window),
        "dense_bytes": stats[-1]["dense_bytes"],
        "dense_fp32_bytes": stats[-1]["dense_fp32_bytes"],
        "modes": sorted({stats[i]["mode"] for i in window}),
        "decision": reducer.decision,
        "probe": reducer.probe,
        "train_loss_last5": last.item() / dist.get_world_size(),
        "eval_loss": eval_loss,
        "losses": losses,
        "step_s": step_s,
    }
    if hasattr(engine, "destroy"):
        engine.destroy()
    del engine, model, reducer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def table(results: list[dict], label: str) -> str:
    dense = next((r for r in results if r["run"] == "dense"), None)
    lines = [
        f"| run ({label}) | step ms | speedup | reduce ms | compress ms | MB sent/rank/step | vs dense fp32 "
        "| eval loss | vs dense | mode |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        speed = f"{dense['step_ms'] / r['step_ms']:.2f}x" if dense else "-"
        gap = f"{(r['eval_loss'] - dense['eval_loss']) / dense['eval_loss'] * 100:+.2f}%" if dense else "-"
        mode = "/".join(r["modes"]) + (f" ({r['decision']})" if r["decision"] else "")
        lines.append(
            f"| {r['run']} | {r['step_ms']:.1f} | {speed} | {r['reduce_ms']:.1f} | {r['compress_ms']:.1f} "
            f"| {r['bytes_sent'] / 1e6:.1f} | {r['dense_fp32_bytes'] / max(r['bytes_sent'], 1):.1f}x "
            f"| {r['eval_loss']:.4f} | {gap} | {mode} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-350m", choices=sorted(LLAMA_SIZES) + ["r1-350m", "r1-1.3b"])
    ap.add_argument("--runs", default="dense,leader,allgather,auto", help="comma list of dense/leader/allgather/auto")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="r1_compression.warmup_steps (dense steps first)")
    ap.add_argument("--probe-steps", type=int, default=5, help="auto: steps timed per side")
    ap.add_argument(
        "--measure-from",
        type=int,
        default=0,
        help="first step of the timing window (default: warmup + 2 * probe-steps + 2)",
    )
    ap.add_argument("--micro-batch", type=int, default=8, help="sequences per GPU per step")
    ap.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--topk-ratio", type=float, default=0.05)
    ap.add_argument("--selection", default="threshold", choices=["threshold", "topk"])
    ap.add_argument(
        "--dense-comm",
        default="fp32",
        choices=["fp32", "bf16"],
        help="communication_data_type of the dense all-reduce (fp32 is the baseline the byte ratios compare with)",
    )
    ap.add_argument("--label", default=None, help="transport name for the table (default: from NCCL env)")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if not args.measure_from:
        args.measure_from = min(args.steps - 1, args.warmup + 2 * args.probe_steps + 2)
    label = args.label or ("socket" if os.environ.get("NCCL_P2P_DISABLE") == "1" else "nvlink")

    import deepspeed
    import deepspeed.comm as dist

    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if (
        not cuda
    ):  # CPU smoke run: skip DeepSpeed's shm op, which leaks 66 MB of /dev/shm per rank (r1_ds/local_ranks.py)
        from r1_ds.parallel.deepspeed_patches import disable_cpu_shm_comm

        disable_cpu_shm_comm()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    vocab = 50304 if args.model.startswith("r1-") else 32000
    if args.model == "llama-tiny":
        args.micro_batch = min(args.micro_batch, 4)
    data = synthetic_tokens(args.steps * args.micro_batch, args.seq, vocab, seed=1000 + rank, device=device)
    data = data.view(args.steps, args.micro_batch, args.seq)
    held_out = synthetic_tokens(4 * args.micro_batch, args.seq, vocab, seed=999, device=device)
    held_out = held_out.view(4, args.micro_batch, args.seq)
    busbw = bus_bandwidth(device)
    if rank == 0:
        print(f"[compression bench] {label}: {world} ranks, all-reduce bus bandwidth {busbw:.1f} GB/s", flush=True)

    results = []
    for run in [r for r in args.runs.split(",") if r]:
        r = run_one(run, args, device, data, held_out)
        results.append(r)
        if rank == 0:
            print(
                f"[compression bench] {run}: {r['step_ms']:.1f} ms/step, eval loss {r['eval_loss']:.4f}, "
                f"{r['bytes_sent'] / 1e6:.1f} MB/rank/step, modes {r['modes']} {r['decision'] or ''} "
                f"{r['probe'] or ''}",
                flush=True,
            )

    if rank == 0:
        meta = {
            "label": label,
            "world": world,
            "model": args.model,
            "params": results[0]["params"],
            "busbw_GBps": busbw,
            "args": vars(args),
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "gpu": torch.cuda.get_device_name() if cuda else "cpu",
            "nccl_env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")},
        }
        payload = json.dumps({"meta": meta, "results": results}, indent=1)
        text = (
            f"{args.model} ({results[0]['params'] / 1e6:.0f}M params), DP {world}, {label} "
            f"(all-reduce bus bandwidth {busbw:.1f} GB/s), {args.steps} steps, micro-batch {args.micro_batch} x "
            f"{args.seq} tokens, timing from step {args.measure_from}\n\n{table(results, label)}\n"
        )
        paths = [args.json] if args.json else []
        if os.environ.get("OUT"):
            paths.append(os.path.join(os.environ["OUT"], f"compression_{label}.json"))
        for path in paths:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(payload)
            with open(path[: -len(".json")] + ".md" if path.endswith(".json") else path + ".md", "w") as f:
                f.write(text)
        print("\n" + text, flush=True)
    if not all(math.isfinite(r["eval_loss"]) for r in results):
        print("a run diverged (non-finite loss)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from r1_ds.distributed import exit_process  # tears the process group down, then ends the rank (see there)

    exit_process(main())
