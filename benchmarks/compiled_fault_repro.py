"""The 350M / 8k compiled-block fault without DeepSpeed or NCCL, so compute-sanitizer can wrap it.

    python benchmarks/compiled_fault_repro.py --flex-in-graph  # 24 layers, 2 x 8,192 tokens, 8 steps, L2 in the graphs
    python benchmarks/compiled_fault_repro.py                  # the same with L2 apart, as the trainer runs it
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
        --kernel-name kns=flex_attention_backward python benchmarks/compiled_fault_repro.py --flex-in-graph

The benchmark that faults (train_throughput.py --models r1-compiled --seq-lens 8192 --flex-in-graph) runs under
DeepSpeed, whose NCCL set-up does not survive compute-sanitizer. This builds the same model (the 350m preset,
every block compiled as the trainer's --compile does), bf16 weights with torch's fused AdamW at the benchmark's settings (lr 3e-4,
betas 0.9 / 0.95, weight decay 0.1, clipping 1.0), trains it on one fixed batch as the benchmark does, and
synchronises after every step so a fault names its step. Prints one line a step; exit 0 when every step ran.
Not a test: it needs a GPU and minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1_ds.model import R1Config, R1ForCausalLM  # noqa: E402
from r1_ds.model import hierarchical_attention as ha  # noqa: E402
from r1_ds.model_setup import compile_blocks  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="350m")
    p.add_argument("--layers", type=int, help="decoder layers (default: the preset's)")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--eager", action="store_true", help="leave the blocks uncompiled (the reference run)")
    p.add_argument(
        "--flex-in-graph",
        action="store_true",
        help="trace L2's block mask and FlexAttention into the block graphs at any length (past "
        "FLEX_IN_BLOCK_GRAPH_MAX_LEN compiled blocks run them apart; in the graph is where the fault was seen)",
    )
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("compiled_fault_repro: needs a CUDA GPU (the fault is in inductor's GPU kernels)", file=sys.stderr)
        return 2
    if args.flex_in_graph:
        ha.FLEX_IN_BLOCK_GRAPH_MAX_LEN = 1 << 30
    overrides = {"max_position_embeddings": max(args.seq_len, 2048)}
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    torch.manual_seed(0)
    model = R1ForCausalLM(R1Config.from_preset(args.preset, **overrides)).cuda().to(torch.bfloat16).train()
    model.set_attn_implementation("flex_attention")
    compiled = 0 if args.eager else compile_blocks(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), device="cuda", generator=gen)
    where = "in" if args.seq_len <= ha.FLEX_IN_BLOCK_GRAPH_MAX_LEN else "apart from"
    print(
        f"{args.preset}, {model.config.num_hidden_layers} layers ({compiled} compiled, L2's flex {where} the block "
        f"graphs), {args.batch} x {args.seq_len}"
    )
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        torch.cuda.synchronize()
        print(f"step {step}: loss {loss.item():.4f}, {time.perf_counter() - t0:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
