"""A full 3D run (pipe x tensor x data) with and without the compressed reduction, against the same
model on one process / fewer GPUs: tokens/s, MFU, peak memory, the loss curves, and an export to a
Hugging Face folder loaded back with from_pretrained.

    # 8 GPUs, the 1.3B preset:
    python benchmarks/run_3d.py --nproc 8 --layout 2x2x2 --preset 1.3b --steps 300 --seq-len 2048 \\
        --global-batch 32 --micro-batch 4 --deepspeed-config ds_configs/pipeline_2stage.json --reference 1x1x4
    # 8 CPU processes, the tiny preset (what runs without GPUs):
    python benchmarks/run_3d.py --device cpu --nproc 8 --layout 2x2x2 --preset tiny --steps 40

Every run is `torchrun ... -m r1_ds.train` (the user's entry point) on the same synthetic data and the
same global batch, so the loss curves are comparable step for step. Prints a table last; writes
$OUT/run_3d.json (or --json) with the curves.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from r1_ds.metrics import read_metrics  # noqa: E402

# auto_fallback off: the "with compression" run compresses every step after warm-up, even where dense is faster
COMPRESSION = {"enabled": True, "topk_ratio": 0.05, "bits": 8, "error_feedback": True, "auto_fallback": False}


def parse_layout(text: str) -> tuple[int, int, int]:
    try:
        pipe, tensor, data = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--layout {text!r}: write it as PIPExTENSORxDATA, e.g. 2x2x2") from None
    return pipe, tensor, data


def train(args, name: str, layout: tuple[int, int, int], compress: bool, work: str) -> dict:
    pipe, tensor, data = layout
    nproc = pipe * tensor * data
    with open(args.deepspeed_config) as f:
        ds = json.load(f)
    if compress:
        ds["r1_compression"] = {**COMPRESSION, "warmup_steps": args.compression_warmup}
    ds_path = os.path.join(work, f"{name}.json")
    with open(ds_path, "w") as f:
        json.dump(ds, f)
    out = os.path.join(work, name)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "r1_ds.train",
        "--preset",
        args.preset,
        "--pipe",
        str(pipe),
        "--tensor",
        str(tensor),
        "--steps",
        str(args.steps),
        "--seq-len",
        str(args.seq_len),
        "--global-batch",
        str(args.global_batch),
        "--micro-batch",
        str(args.micro_batch),
        "--deepspeed_config",
        ds_path,
        "--output-dir",
        out,
        "--resume",
        "none",
        "--no-progress",
        "--warmup-steps",
        str(max(1, args.steps // 10)),
        "--set",
        "log.tensorboard=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    print(f"[run_3d] {name}: {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return {"name": name, "error": (proc.stdout + proc.stderr)[-2000:]}
    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    timed = [r for r in records if r["step"] > args.steps // 4] or records  # skip compile / warm-up steps
    row = {
        "name": name,
        "layout": f"{pipe}x{tensor}x{data}",
        "procs": nproc,
        "compression": compress,
        "tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed),
        "mfu": sum(r["mfu"] for r in timed) / len(timed) if all(r.get("mfu") is not None for r in timed) else None,
        "peak_mem_gib": max(r.get("peak_mem_gib") or 0 for r in records),
        "final_loss": records[-1]["loss"],
        "curve": [(r["step"], r["loss"]) for r in records],
        "compression_ratio": records[-1].get("compression/ratio_vs_fp32"),
    }
    row.update(export_and_load(out, env))
    return row


def export_and_load(run_dir: str, env: dict) -> dict:
    """r1-ds export, then from_pretrained in a fresh process: the folder loads and gives finite logits."""
    hf = os.path.join(run_dir, "hf")
    proc = subprocess.run(
        [sys.executable, "-m", "r1_ds.cli", "export", os.path.join(run_dir, "checkpoints"), hf],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return {"export": "failed: " + proc.stderr[-300:]}
    check = (
        "import torch, r1_ds; from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({hf!r}).eval()\n"
        "x = torch.randint(0, m.config.vocab_size, (1, 32))\n"
        "with torch.no_grad(): y = m(x, labels=x)\n"
        "assert torch.isfinite(y.logits).all(); print(type(m).__name__, y.loss.item())\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True)
    return {"export": "loaded" if proc.returncode == 0 else "load failed: " + proc.stderr[-300:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--nproc", type=int, default=8, help="processes of the 3D run (pipe x tensor x data)")
    p.add_argument("--layout", default="2x2x2", help="PIPExTENSORxDATA of the 3D run")
    p.add_argument("--reference", default="1x1x1", help="layout of the comparison run on fewer devices")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--compression-warmup", type=int, default=5, help="dense steps before compressing")
    p.add_argument(
        "--deepspeed-config", default=None, help="default: tiny_cpu.json on cpu, pipeline_2stage.json on cuda"
    )
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.deepspeed_config = args.deepspeed_config or os.path.join(
        ROOT, "ds_configs", "tiny_cpu.json" if args.device == "cpu" else "pipeline_2stage.json"
    )
    layout = parse_layout(args.layout)
    if layout[0] * layout[1] * layout[2] != args.nproc:
        raise SystemExit(
            f"--layout {args.layout} has {layout[0] * layout[1] * layout[2]} ranks but --nproc is {args.nproc}"
        )

    work = tempfile.mkdtemp(prefix="run_3d_")
    rows = [
        train(args, "reference", parse_layout(args.reference), False, work),
        train(args, "3d", layout, False, work),
        train(args, "3d_compressed", layout, True, work),
    ]
    ref = rows[0].get("final_loss")
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": args.device,
        "host": platform.node(),
        "command": "python benchmarks/run_3d.py " + " ".join(sys.argv[1:]),
        **vars(args),
    }
    out = args.json or os.path.join(
        os.environ.get("OUT", os.path.join(ROOT, "benchmarks", "results")), f"run_3d_{args.device}.json"
    )
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n3D run, {args.preset}, {args.steps} steps, global batch {args.global_batch} x {args.seq_len} tokens ({args.device})"
    )
    print(
        f"{'run':14} {'layout':7} {'procs':>5} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>8} {'final loss':>10} "
        f"{'vs ref':>7} {'bytes/':>7} export"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['name']:14} FAILED: {r['error'][-300:]}")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        ratio = f"{r['compression_ratio']:.1f}x" if r.get("compression_ratio") else "-"
        vs = f"{(r['final_loss'] / ref - 1):+.2%}" if ref else "-"
        print(
            f"{r['name']:14} {r['layout']:7} {r['procs']:>5} {r['tokens_per_s']:>10,.0f} {mfu:>6} "
            f"{r['peak_mem_gib']:>8.2f} {r['final_loss']:>10.4f} {vs:>7} {ratio:>7} {r['export']}"
        )


if __name__ == "__main__":
    main()
