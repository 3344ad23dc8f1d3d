"""Training throughput on one GPU: R1 against a Hugging Face LlamaForCausalLM of the same size,
both under the same DeepSpeed config, in the same run.

    python benchmarks/train_throughput.py                          # 350m and 1.3b, 2k and 8k tokens
    python benchmarks/train_throughput.py --sizes 350m --seq-lens 2048 --steps 10
    OUT=results python benchmarks/train_throughput.py              # also writes $OUT/train_throughput.json

For every (size, sequence length, model): build the model on the GPU (seed 0), `deepspeed.initialize`
with ds_configs/single_gpu_bf16.json (bf16, fp32 master weights and gradient accumulation, fused
AdamW, clipping 1.0; micro-batch and accumulation overridden so one step = `--grad-accum` micro-batches
(default 1) of `--tokens` tokens each, then one optimizer step), run `--warmup` steps (FlexAttention
compiles here), then time `--steps` full training steps (forward, backward, clipping, optimizer).
Reports tokens/s, MFU (model FLOPs of r1_ds/flops.py: matmuls of forward + backward, no recomputation,
attention per visible key; peak 989 TFLOP/s bf16 dense for H100/H200), peak memory and GPU busy: the
kernel time of one more step, traced, over a timed step's wall time (well under 100%: the host, not the GPU, sets the step's pace, so the figure
moves with the host's CPU; the JSON names it), and the host syncs of one more step (times the host waits for
the GPU, with the lines that made it wait, printed after the table). R1 uses attn_implementation
"flex_attention"; Llama uses "sdpa" (flash / cuDNN kernels), the same width, depth, SwiGLU width,
vocabulary and tied embeddings, and as many heads as R1's widest-but-one level (head size 64/128).
A model name with "-compiled" (`--models r1 r1-compiled llama llama-compiled`) runs that model with every decoder
block compiled whole (torch.compile, as the trainer's --compile and torchtitan do), so both ways of running each
model are compared in one run; every R1 row is compared with every Llama row of its size and length.
`--compile-mode reduce-overhead` compiles those blocks as CUDA graphs (one replay per block instead of a launch per
kernel), to measure how much of a compiled step's idle GPU is launch overhead.
Prints a table last. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import sys
import time
import warnings
from collections import Counter

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import inductor_config  # noqa: E402
from benchmarks.host import machine  # noqa: E402
from r1_ds.flops import dense_flops_per_token, flops_per_token, peak_flops  # noqa: E402
from r1_ds.model import R1Config, R1ForCausalLM  # noqa: E402
from r1_ds.model import hierarchical_attention as ha  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["350m", "1.3b"], help="R1 presets")
    p.add_argument("--seq-lens", nargs="+", type=int, default=[2048, 8192])
    p.add_argument(
        "--models",
        nargs="+",
        default=["r1", "llama"],
        choices=["r1", "llama", "r1-compiled", "llama-compiled"],
        help="models in the order they run; -compiled: each decoder block compiled whole",
    )
    p.add_argument("--tokens", type=int, default=16384, help="tokens per micro-batch (micro-batch = tokens // seq_len)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="micro-batches a step accumulates before its optimizer step (ds_configs/single_gpu_bf16.json ships 4); "
        "1 charges every micro-batch a whole optimizer step, the fp32 master update and clipping included",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="untimed steps first (compilation, allocator; at least 1: its loss is the table's first loss)",
    )
    p.add_argument("--deepspeed-config", default=os.path.join(ROOT, "ds_configs", "single_gpu_bf16.json"))
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute activations (both models)")
    p.add_argument(
        "--compile-blocks",
        action="store_true",
        help="torch.compile each decoder block in place (every model, torchtitan-style; as naming each "
        "model with -compiled): how much of the gap is Python and kernel-launch overhead",
    )
    p.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
        default="default",
        help="torch.compile mode of the compiled blocks (reduce-overhead: CUDA graphs, no per-kernel launch cost)",
    )
    p.add_argument(
        "--l1-kernel", choices=ha.L1_CUDA_KERNELS, default=ha.L1_CUDA_KERNEL, help="R1's L1 attention kernel on CUDA"
    )
    p.add_argument(
        "--inductor",
        action="append",
        metavar="KEY=VALUE",
        help="a torch._inductor.config setting for this run, e.g. cpp_wrapper=True (repeatable)",
    )
    p.add_argument(
        "--l2-apart",
        choices=ha.L2_APART_MODES,
        default=ha.L2_APART,
        help="compiled R1 past FLEX_IN_BLOCK_GRAPH_MAX_LEN tokens: L2 behind a graph break, or as one opaque op "
        "(hierarchical_attention.L2_APART)",
    )
    p.add_argument(
        "--flex-in-graph",
        action="store_true",
        help="compiled R1: trace L2's block mask and FlexAttention into the block graphs at any length (past "
        "FLEX_IN_BLOCK_GRAPH_MAX_LEN tokens they run apart, as --l2-apart says; a probe of the fault seen in the "
        "graph at 8k)",
    )
    p.add_argument("--json", help="write results here (default: $OUT/train_throughput.json when $OUT is set)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after timing, trace one step with torch.profiler and print the 25 costliest kernels",
    )
    p.add_argument(
        "--profile-host",
        action="store_true",
        help="after timing, print where one step's host (CPU) time goes: torch.profiler's ops by self CPU time, "
        "then cProfile's Python functions by own time (a tuning aid for host-bound steps)",
    )
    args = p.parse_args(argv)
    compiles = args.compile_blocks or any(m.endswith("-compiled") for m in args.models)
    if args.compile_mode != "default" and not compiles:
        p.error(
            f"--compile-mode {args.compile_mode}: no model is compiled, so it would change nothing; name a model "
            "with -compiled (e.g. --models r1-compiled llama) or add --compile-blocks"
        )
    if args.grad_accum < 1:
        p.error(f"--grad-accum {args.grad_accum}: must be at least 1 (micro-batches per optimizer step); use 1 or 4")
    if args.warmup < 1:
        p.error(
            f"--warmup {args.warmup}: must be at least 1 (the first step's loss is the one the table compares "
            "the last against); use --warmup 1"
        )
    return args


def r1_model(preset: str, seq_len: int) -> torch.nn.Module:
    config = R1Config.from_preset(preset, max_position_embeddings=max(seq_len, 2048))
    model = R1ForCausalLM(config)
    model.set_attn_implementation("flex_attention")
    return model


def llama_model(preset: str, seq_len: int) -> torch.nn.Module:
    from benchmarks.llama_reference import llama_like

    return llama_like(R1Config.from_preset(preset), max_positions=max(seq_len, 2048))


def model_flops(name: str, preset: str, seq_len: int) -> float:
    c = R1Config.from_preset(preset, max_position_embeddings=max(seq_len, 2048))
    if name == "r1":
        return flops_per_token(c, seq_len)
    return dense_flops_per_token(
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_layers=c.num_hidden_layers,
        vocab_size=c.vocab_size,
        seq_len=seq_len,
    )


def bench_one(name: str, preset: str, seq_len: int, args, ds_base: dict) -> dict:
    import deepspeed

    from r1_ds.distributed import peak_memory_gib

    compiled = args.compile_blocks or name.endswith("-compiled")
    name = name.removesuffix("-compiled")

    micro = max(1, args.tokens // seq_len)
    ds = copy.deepcopy(ds_base)
    accum = args.grad_accum
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum, train_batch_size=micro * accum)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    row = {
        "model": name,
        "compiled": compiled,
        "size": preset,
        "seq_len": seq_len,
        "micro_batch": micro,
        "grad_accum": accum,
    }
    try:
        with torch.device("cuda"):
            model = r1_model(preset, seq_len) if name == "r1" else llama_model(preset, seq_len)
        if args.activation_checkpointing:
            model.gradient_checkpointing_enable()
        if compiled:  # R1: the trainer's --compile (r1_ds.model_setup.compile_blocks); Llama: the same by hand
            if name == "r1":
                from r1_ds.config import COMPILED_FLEX_MAX_SEQ_LEN
                from r1_ds.model_setup import compile_blocks

                if seq_len > COMPILED_FLEX_MAX_SEQ_LEN:  # the trainer refuses this; the benchmark runs it to probe it
                    print(
                        f"note: compiled R1 at {seq_len} tokens, past the trainer's limit of "
                        f"{COMPILED_FLEX_MAX_SEQ_LEN} on a GPU, the longest verified there (docs/training.md, "
                        "'Compiled blocks')",
                        file=sys.stderr,
                    )
                compile_blocks(model, mode=args.compile_mode)
            else:
                for layer in model.model.layers:
                    layer.compile(mode=args.compile_mode)
        row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
        gen = torch.Generator(device="cuda").manual_seed(1)
        ids = torch.randint(0, model.config.vocab_size, (micro, seq_len), device="cuda", generator=gen)

        def step():  # `accum` micro-batches; DeepSpeed's engine.step() updates the weights at the last
            for _ in range(accum):
                if compiled and args.compile_mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()  # a new iteration: last step's graph outputs may go
                loss = engine(input_ids=ids, labels=ids).loss
                engine.backward(loss)
                engine.step()
            return loss

        # the same batch every step: a model that trains memorises it, so the loss must fall (a throughput
        # figure of a model that does not learn is no figure: the table flags it)
        first_loss = float(step())
        first_grad_norm = engine.get_global_grad_norm()
        for _ in range(args.warmup - 1):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tok_s = micro * accum * seq_len * args.steps / dt
        busy = gpu_seconds(step)
        syncs, sync_sites = host_syncs(step)
        peak = peak_flops("bf16")
        what = f"{'compiled ' if compiled else ''}{name} {preset} step at {seq_len} tokens"
        if args.profile:  # where a step's time goes (a tuning aid; not part of the figures)
            acts = [torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
            with torch.profiler.profile(activities=acts) as prof:
                t1 = time.perf_counter()
                step()
                torch.cuda.synchronize()
                t1 = time.perf_counter() - t1
            print(
                f"profile of one {what} ({t1 * 1e3:.0f} ms wall, profiled):\n"
                + prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=70)
            )
        if args.profile_host:
            print_host_profile(step, what)
        row.update(
            tokens_per_s=tok_s,
            step_s=dt / args.steps,
            gpu_busy=min(1.0, busy / (dt / args.steps)) if busy else None,  # None: the trace held no kernel
            host_syncs=syncs,
            sync_sites=sync_sites,
            first_loss=first_loss,
            loss=float(loss),
            first_grad_norm=None if first_grad_norm is None else float(first_grad_norm),
            mfu=model_flops(name, preset, seq_len) * tok_s / peak if peak else None,
            peak_mem_gib=peak_memory_gib(),
        )
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    finally:
        engine = model = None  # noqa: F841  (free before the next model)
        gc.collect()
        torch.cuda.empty_cache()
    return row


def print_host_profile(step, what: str) -> None:
    """Where one step's host time goes, two views: torch.profiler's CPU ops (aten ops, compiled regions, autograd
    nodes) by self CPU time, and cProfile's Python functions by their own time (dynamo's guards and wrappers,
    module calls, DeepSpeed's hooks). A GPU that idles through part of a step waits on these."""
    import cProfile
    import io
    import pstats

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
        torch.cuda.synchronize()
    print(
        f"host profile of one {what}, torch.profiler, by self CPU time:\n"
        + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70)
    )
    profiler = cProfile.Profile()
    t = time.perf_counter()
    profiler.enable()
    step()
    torch.cuda.synchronize()
    profiler.disable()
    t = time.perf_counter() - t
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    print(f"host profile of one {what}, cProfile ({t * 1e3:.0f} ms wall with cProfile on):\n{out.getvalue()}")


def gpu_seconds(step) -> float:
    """Kernel time of one more step, traced with CUDA activity alone (kernels, copies, memsets). Against the timed
    step's wall time it says how much of a step the GPU works: a step whose GPU idles for a good part of it is
    bound by the host (Python, dispatch, kernel launches), so its tokens/s moves with the host's CPU, and kernel
    work saved there buys nothing."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e6  # microseconds


def host_syncs(step) -> tuple[int, list[str]]:
    """How often one more step makes the host wait for the GPU (torch.cuda.set_sync_debug_mode: `.item()`, a
    copy to the host, `nonzero`, ...), and the Python lines that did, most frequent first. Every sync drains the
    queue of launched kernels, so the GPU idles while the host launches the next ones: a host-bound step with
    syncs in every layer loses more than its Python time."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    sites = Counter(
        f"{os.path.relpath(w.filename, ROOT)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()
    )
    return sum(sites.values()), [f"{site} x{n}" for site, n in sites.most_common(8)]


def _learns(row: dict) -> bool:
    """Its loss fell by more than 0.1 on the batch it sees every step."""
    return row["loss"] < row["first_loss"] - 0.1


def _label(row: dict) -> str:
    return row["model"] + ("-compiled" if row.get("compiled") else "")


def _micro(row: dict) -> str:
    """The micro-batch, times the micro-batches a step accumulates where more than one (8x4)."""
    accum = row.get("grad_accum", 1)
    return f"{row['micro_batch']}" + (f"x{accum}" if accum > 1 else "")


def table(rows: list[dict]) -> str:
    head = (
        f"{'size':>5} {'seq':>6} {'model':>14} {'micro':>7} {'params M':>9} {'tokens/s':>10} {'MFU':>6} "
        f"{'peak GiB':>9} {'GPU busy':>8} {'syncs':>5} {'loss first -> last':>20}  R1 / Llama"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['size']:>5} {r['seq_len']:>6} {_label(r):>14} {_micro(r):>7}  {r['error']}")
            continue
        ratio = ""
        if r["model"] == "r1":  # against every Llama row of this size and length
            ratio = ", ".join(
                f"{r['tokens_per_s'] / b['tokens_per_s']:.2f}x {_label(b)}"
                for b in rows
                if b["model"] == "llama" and "error" not in b and (b["size"], b["seq_len"]) == (r["size"], r["seq_len"])
            )
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        busy = f"{r['gpu_busy']:.0%}" if r.get("gpu_busy") is not None else "-"
        syncs = r.get("host_syncs", "-")
        loss = f"{r['first_loss']:.2f} -> {r['loss']:.2f}" + ("" if _learns(r) else " (!)")
        lines.append(
            f"{r['size']:>5} {r['seq_len']:>6} {_label(r):>14} {_micro(r):>7} {r['params_m']:>9.0f} "
            f"{r['tokens_per_s']:>10,.0f} {mfu:>6} {r['peak_mem_gib']:>9.1f} {busy:>8} {syncs:>5} {loss:>20}  {ratio}"
        )
    if not all(_learns(r) for r in rows if "error" not in r):
        lines.append("(!) the loss did not fall on a batch the model sees every step: that model is not training")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("train_throughput: needs a CUDA GPU (R1 runs its FlexAttention path there)", file=sys.stderr)
        return 2
    from r1_ds.distributed import init_distributed

    torch.backends.cuda.matmul.allow_tf32 = True
    ha.set_l1_cuda_kernel(args.l1_kernel)
    ha.L2_APART = args.l2_apart
    if args.flex_in_graph:
        print(
            "note: --flex-in-graph: compiled R1 traces L2's FlexAttention into its block graphs at every length; at "
            "8k tokens that faults (docs/training.md, 'Compiled blocks')",
            file=sys.stderr,
        )
        ha.FLEX_IN_BLOCK_GRAPH_MAX_LEN = 1 << 30
    inductor = inductor_config.apply(args.inductor)
    init_distributed()  # a world of one process
    with open(args.deepspeed_config) as f:
        ds_base = json.load(f)
    rows = []
    for preset in args.sizes:
        for seq_len in args.seq_lens:
            for name in args.models:
                row = bench_one(name, preset, seq_len, args, ds_base)
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {
        "benchmark": "train_throughput",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "host": machine(),
        "torch": torch.__version__,
        "deepspeed_config": os.path.relpath(args.deepspeed_config, ROOT),
        "tokens_per_micro_batch": args.tokens,
        "steps": args.steps,
        "grad_accum": args.grad_accum,
        "warmup": args.warmup,
        "activation_checkpointing": args.activation_checkpointing,
        "compile_blocks": args.compile_blocks,
        "compile_mode": args.compile_mode,
        "l1_kernel": args.l1_kernel,
        "flex_in_block_graph_max_len": ha.FLEX_IN_BLOCK_GRAPH_MAX_LEN,
        "l2_apart": ha.L2_APART,
        "inductor": inductor,
        "rows": rows,
    }
    path = args.json or (os.path.join(os.environ["OUT"], "train_throughput.json") if os.environ.get("OUT") else None)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    print()
    print(table(rows))
    for r in rows:  # where each model makes the host wait, to find the ones a host-bound step can drop
        if r.get("sync_sites"):
            print(f"host syncs of {_label(r)} {r['size']} / {r['seq_len']}: " + ", ".join(r["sync_sites"]))
    return 0


if __name__ == "__main__":
    from r1_ds.distributed import exit_process  # tears the process group down, then ends the rank (see there)

    exit_process(main())
