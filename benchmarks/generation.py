"""Long-context generation: prefill of a long prompt, then greedy decoding with the KV cache, R1 against a Hugging
Face LlamaForCausalLM of the same size (SDPA attention), on one GPU.

    python benchmarks/generation.py --preset 350m --context 32768 --new-tokens 64
    python benchmarks/generation.py --device cpu --preset tiny --context 512 --new-tokens 8   # a smoke run

Time to first token is the prefill forward of the whole prompt plus the first greedy pick; decode tokens/s is
batch * new tokens over the time of the decoding steps (one forward of one token each, with the cache). Both
models are random-init in bf16 (fp32 on CPU) and see the same prompt; each is warmed up at the same length first
(R1 compiles its fast path for that length), so compile time is not counted. Prints a table last and writes JSON
to --json (default $OUT/generation_<device>.json when $OUT is set).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from r1_ds.model import R1Config, R1ForCausalLM  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="350m", help="R1 size preset; Llama gets the same width, depth and MLP")
    p.add_argument("--context", type=int, nargs="+", default=[32768], help="prompt lengths in tokens")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens decoded after the prompt")
    p.add_argument("--batch", type=int, default=1, help="prompts decoded together")
    p.add_argument("--models", nargs="+", default=["r1", "llama"], choices=["r1", "llama"], help="models to time")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where to run")
    p.add_argument("--json", default=None, help="where to write the results (default: $OUT/generation_<device>.json)")
    args = p.parse_args(argv)
    for n in args.context:
        if n < 1:
            p.error(f"--context {n}: a prompt needs at least one token; use e.g. --context 32768")
    if args.new_tokens < 2:
        p.error(f"--new-tokens {args.new_tokens}: at least 2 (one for the first token, one to time decoding)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu for a smoke run")
    return args


def build(name: str, preset: str, context: int, new_tokens: int, device: str) -> torch.nn.Module:
    length = max(context + new_tokens, 2048)
    r1 = R1Config.from_preset(preset, max_position_embeddings=length)
    if name == "r1":
        model = R1ForCausalLM(r1)
        model.set_attn_implementation("flex_attention")
    else:
        from benchmarks.llama_reference import llama_like

        model = llama_like(r1, max_positions=length)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return model.to(device=device, dtype=dtype).eval()


def _cache(out):
    return out.past_key_values if getattr(out, "past_key_values", None) is not None else out.cache


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def generate(model, prompt: torch.Tensor, new_tokens: int, device: str) -> tuple[float, float, torch.Tensor]:
    """(seconds to the first token, seconds of the decoding steps, the tokens): greedy, with the cache."""
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    tok = out.logits[:, -1:].argmax(-1)
    _sync(device)
    t1 = time.perf_counter()
    cache, toks = _cache(out), [tok]
    for _ in range(new_tokens - 1):
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        cache, tok = _cache(out), out.logits[:, -1:].argmax(-1)
        toks.append(tok)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1, torch.cat(toks, 1)


def bench_one(name: str, args, context: int) -> dict:
    model = build(name, args.preset, context, args.new_tokens, args.device)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (args.batch, context), generator=gen).to(args.device)
    generate(model, prompt, 4, args.device)  # warm-up at this length: compiles R1's fast path for it
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ttft, decode_s, _ = generate(model, prompt, args.new_tokens, args.device)
    row = {
        "model": name,
        "preset": args.preset,
        "context": context,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "ttft_ms": round(ttft * 1e3, 2),
        "decode_tokens_per_s": round(args.batch * (args.new_tokens - 1) / decode_s, 1),
        "decode_ms_per_step": round(decode_s * 1e3 / (args.new_tokens - 1), 2),
    }
    if args.device == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict]) -> str:
    lines = [
        f"{'model':<6} {'context':>8} {'batch':>5} {'TTFT ms':>10} {'decode tok/s':>13} {'ms/step':>8} "
        f"{'peak GiB':>9} {'decode vs llama':>16}"
    ]
    llama = {(r["context"], r["batch"]): r for r in rows if r["model"] == "llama"}
    for r in rows:
        ref = llama.get((r["context"], r["batch"]))
        ratio = f"{r['decode_tokens_per_s'] / ref['decode_tokens_per_s']:.2f}x" if ref and r is not ref else ""
        lines.append(
            f"{r['model']:<6} {r['context']:>8} {r['batch']:>5} {r['ttft_ms']:>10.1f} "
            f"{r['decode_tokens_per_s']:>13.1f} {r['decode_ms_per_step']:>8.2f} "
            f"{r.get('peak_gib', float('nan')):>9.2f} {ratio:>16}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    for context in args.context:
        for name in args.models:
            rows.append(bench_one(name, args, context))
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "generation",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "command": " ".join(["python", "benchmarks/generation.py", *sys.argv[1:]]),
        "rows": rows,
    }
    path = args.json or (
        os.path.join(os.environ["OUT"], f"generation_{args.device}.json") if os.environ.get("OUT") else None
    )
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
