"""Throughput of `r1-ds prep` on the datatrove engine: documents per second with 1, 2, ... local workers, plus the
per-document cost of reading, signatures, the whole-corpus dedup decision in one process (the reference the engine
splits over buckets and bands) and tokenization.

    python benchmarks/data_prep_scale.py                          # 1 and 2 workers, 6,000 documents
    python benchmarks/data_prep_scale.py --workers 1 2 4 8 16 --docs 40000 --json $OUT/data_prep_scale.json

The corpus is generated: each document is two Python documentation chunks (~3,100 characters, distinct pairs, so
no document is a duplicate of another) written to gzipped JSONL files. The text pipeline is the default one
(read, length, exact dedup, language, Gopher, C4, FineWeb, entropy; no quality model) plus MinHash near-dedup
(14 x 8) unless --no-near-dedup. `docs_per_s` is wall-clock, from the start of the engine to its merged stats
(start-up of the worker processes and the dedup stages included); `docs_per_cpu_s` divides by the CPU seconds the
tasks of the signatures and filter stages spent (each task measures its own, in engine/text/logs/timing/), which
other jobs on a shared machine do not inflate.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def make_corpus(folder: Path, docs: int, files: int) -> int:
    from data_prep.sample_corpus import python_doc_chunks

    chunks = [t for _, t in python_doc_chunks()]
    n = len(chunks)
    pairs = ((i % n, (i // n + 1 + i) % n) for i in range(docs))
    per_file = -(-docs // files)
    total_bytes = 0
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": chunks[a] + "\n\n" + chunks[b]}) + "\n" for a, b in pairs]
    for f in range(files):
        data = "".join(lines[f * per_file : (f + 1) * per_file]).encode()
        total_bytes += len(data)
        (folder / f"part_{f:04d}.jsonl.gz").write_bytes(gzip.compress(data, compresslevel=6))
    return total_bytes


def engine_run(corpus: Path, out: Path, *, workers: int, tasks: int, near_dedup: bool) -> dict:
    from data_prep.engine.run import run_engine
    from data_prep.scale_config import ScaleSettings
    from data_prep.stages import text_filters

    cfg = ScaleSettings(executor="local", workers=workers, tasks=tasks, near_dedup=near_dedup)
    t = time.perf_counter()
    totals = run_engine(specs=[str(corpus)], filters=text_filters(), out=out, cfg=cfg, text_field="text", id_field=None)
    wall = time.perf_counter() - t
    first = next(iter(totals.values()))
    kept = list(totals.values())[-1]["kept"]
    timing = out / "engine" / "text" / "logs" / "timing"  # each task's own CPU and wall seconds
    sig_cpu = sum(json.loads(p.read_text())["cpu_s"] for p in timing.glob("signatures_*.json"))
    filt_cpu = sum(json.loads(p.read_text())["cpu_s"] for p in timing.glob("filter_*.json"))
    n = first["in"]
    return {
        "workers": workers,
        "tasks": tasks,
        "docs": n,
        "kept": kept,
        "wall_s": round(wall, 2),
        "docs_per_s": round(n / wall, 1),
        "signatures_cpu_s": round(sig_cpu, 2),
        "filter_cpu_s": round(filt_cpu, 2),
        "docs_per_cpu_s": round(n / (sig_cpu + filt_cpu), 1),
    }


def serial_costs(corpus: Path, n_dedup: int) -> dict:
    """Per-document costs in one thread: reading (gunzip + JSON), signatures, the whole-corpus dedup decision in one
    process (``find_duplicates`` on n_dedup synthetic signatures), and tokenization with a byte-level BPE."""
    import numpy as np

    from data_prep.engine.dedup import find_duplicates
    from data_prep.engine.inputs import iter_input_documents, list_inputs
    from data_prep.filters.exact_dedup import content_hash
    from data_prep.minhash import MinHasher, MinHashParams

    files = list_inputs([str(corpus)])
    t = time.process_time()
    docs = [d for f in files for d in iter_input_documents(f, text_field="text", id_field=None)]
    read_s = time.process_time() - t
    raw_mb = sum(len(d.text.encode()) for d in docs) / 1e6
    texts = [d.text for d in docs[:2000]]
    hasher = MinHasher(MinHashParams())
    t = time.process_time()
    for d in docs[:2000]:
        content_hash(d)
        hasher.band_keys(d.text)
    sig_per_doc = (time.process_time() - t) / len(texts)
    rng = np.random.default_rng(0)
    sha1 = rng.integers(0, 255, size=(n_dedup, 20), dtype=np.uint8).view("S20").reshape(n_dedup)
    bands = rng.integers(0, 1 << 62, size=(n_dedup, 14), dtype=np.uint64)
    t = time.process_time()
    find_duplicates(sha1, bands)
    dedup_per_doc = (time.process_time() - t) / n_dedup

    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=8192, min_frequency=2, show_progress=False)
    t = time.process_time()
    for text in texts:
        tok.encode(text)
    tok_per_doc = (time.process_time() - t) / len(texts)
    return {
        "read_docs_per_cpu_s": round(len(docs) / read_s, 1),
        "read_mb_per_cpu_s": round(raw_mb / read_s, 1),
        "signature_docs_per_cpu_s": round(1 / sig_per_doc, 1),
        "global_dedup_docs_per_cpu_s": round(1 / dedup_per_doc, 1),
        "global_dedup_bytes_per_doc": 20 + 8 * 14,
        "global_dedup_sample": n_dedup,
        "tokenize_docs_per_cpu_s": round(1 / tok_per_doc, 1),
        "mean_doc_chars": round(sum(len(t) for t in texts) / len(texts)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=6000)
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tasks", type=int, default=8, help="the same task split for every worker count")
    p.add_argument("--no-near-dedup", dest="near_dedup", action="store_false")
    p.add_argument("--dedup-sample", type=int, default=200_000)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "data_prep_scale_cpu.json"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="prep_scale_"))
    try:
        raw = make_corpus(tmp / "corpus", args.docs, args.files)
        rows = []
        for w in args.workers:
            rows.append(
                engine_run(
                    tmp / "corpus", tmp / f"out_w{w}", workers=w, tasks=max(args.tasks, w), near_dedup=args.near_dedup
                )
            )
            print(f"workers={w}: {rows[-1]}", flush=True)
        serial = serial_costs(tmp / "corpus", args.dedup_sample)
        print(f"serial parts (one thread): {serial}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "command": "python benchmarks/data_prep_scale.py " + " ".join(sys.argv[1:]),
        "corpus": {"docs": args.docs, "files": args.files, "uncompressed_bytes": raw},
        "near_dedup": args.near_dedup,
        "engine": rows,
        "serial": serial,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
