"""The offline corpus of benchmarks/quality.py: text that ships with this Python install, prepared by
`r1-ds prep` into packed train shards and a held-out split that shares no source file with them.

    python benchmarks/quality_corpus.py                       # -> .quality_data/ (git-ignored)
    python benchmarks/quality_corpus.py --max-code-mb 4 --out /tmp/qc   # a small one

Sources, in a fixed order (sorted paths), each file one document:
  code  the standard library's .py files (docstrings included), then the .py files of the installed packages
        (site-packages), at most --per-package-mb each, until --max-code-mb in all;
  text  the Python documentation topics (pydoc_data.topics, one document each) and the .md / .rst / .txt files
        the installed packages ship.
A file goes to the held-out split when a hash of its path falls under --heldout-permille (so no file is in both;
a topic's key plays the part of its path), until --heldout-mb.

Each split is written as raw input (text.jsonl + a code/ tree of the chosen files), then prepared by `r1-ds prep`
(data_prep.prep.run, the real path): text through the text filters, code through the code filters, byte-level BPE
trained on the train split only, packed rows of --seq-len tokens. The held-out split is packed with the train
split's tokenizer (--tokenizer). The quality classifier is off (`--quality-model none`: no model runs) and so are
docstring pairs (they go to triples, not to shards). The result, all the GPU run needs (tens of MiB):
    OUT/pack/tokenizer/   OUT/pack/train/ (shards)   OUT/pack/heldout/ (shards)
Both shard folders name ../tokenizer, so OUT/pack travels as one folder.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MB = 1 << 20
TEXT_SUFFIXES = (".md", ".rst", ".txt")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, ".quality_data"))
    p.add_argument("--max-code-mb", type=float, default=64.0, help="Python source, standard library first")
    p.add_argument("--per-package-mb", type=float, default=2.0, help="most source taken from one installed package")
    p.add_argument("--max-text-mb", type=float, default=12.0, help="documentation text (before filtering)")
    p.add_argument("--heldout-permille", type=int, default=30, help="share of source files held out, per mille")
    p.add_argument("--heldout-mb", type=float, default=2.5, help="most held-out input")
    p.add_argument("--vocab-size", type=int, default=32768, help="BPE vocabulary (<= 65536 keeps uint16 shards)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per packed row")
    p.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"])
    p.add_argument("--site-packages", default=sysconfig.get_paths()["purelib"])
    return p.parse_args(argv)


def heldout(key: str, permille: int) -> bool:
    """Whether the source `key` (a path) is held out: a stable hash, independent of order and machine."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "little") % 1000 < permille


def _files(root: Path, suffixes: tuple[str, ...], skip_site_packages: bool = False):
    """Regular files under root with one of the suffixes, in sorted order (no symlinks followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in ("__pycache__", ".git") and not (skip_site_packages and d == "site-packages")
        )
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.endswith(suffixes) and path.is_file() and not path.is_symlink() and path.stat().st_size < MB:
                yield path


def collect_code(stdlib: Path, site: Path, *, max_bytes: int, per_package: int):
    """(key, path) of the Python sources, standard library first, then each installed package capped."""
    total = 0
    for path in _files(stdlib, (".py",), skip_site_packages=True):
        if total >= max_bytes:
            return
        total += path.stat().st_size
        yield f"stdlib/{path.relative_to(stdlib)}", path
    for package in sorted(p for p in site.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", ".egg-info"))):
        taken = 0
        for path in _files(package, (".py",)):
            size = path.stat().st_size
            if taken + size > per_package:
                break
            if total >= max_bytes:
                return
            taken += size
            total += size
            yield f"site-packages/{path.relative_to(site)}", path


def collect_text(site: Path, *, max_bytes: int):
    """(key, text) of the documentation: Python's doc topics, then the .md/.rst/.txt the packages ship."""
    total = 0
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions leave pydoc_data out
        topics = {}
    for key in sorted(topics):
        total += len(topics[key])
        yield f"pydoc_data.topics/{key}", topics[key]
    for path in _files(site, TEXT_SUFFIXES):
        if total >= max_bytes:
            return
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        total += len(text)
        yield f"site-packages/{path.relative_to(site)}", text


def write_raw(args, raw: Path) -> dict:
    """raw/{train,heldout}/text.jsonl and raw/{train,heldout}/code/<key>; returns counts and bytes per split."""
    counts = {s: {"code_files": 0, "code_bytes": 0, "text_docs": 0, "text_bytes": 0} for s in ("train", "heldout")}
    held_budget = int(args.heldout_mb * MB)
    held_bytes = 0

    def split_of(key: str, size: int) -> str:
        nonlocal held_bytes
        if heldout(key, args.heldout_permille) and held_bytes + size <= held_budget:
            held_bytes += size
            return "heldout"
        return "train"

    for split in counts:
        (raw / split / "code").mkdir(parents=True, exist_ok=True)
    for key, path in collect_code(
        Path(args.stdlib),
        Path(args.site_packages),
        max_bytes=int(args.max_code_mb * MB),
        per_package=int(args.per_package_mb * MB),
    ):
        size = path.stat().st_size
        split = split_of(key, size)
        dst = raw / split / "code" / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
        counts[split]["code_files"] += 1
        counts[split]["code_bytes"] += size
    with contextlib.ExitStack() as stack:
        sinks = {s: stack.enter_context(open(raw / s / "text.jsonl", "w", encoding="utf-8")) for s in counts}
        for key, text in collect_text(Path(args.site_packages), max_bytes=int(args.max_text_mb * MB)):
            split = split_of(key, len(text))
            sinks[split].write(json.dumps({"id": key, "text": text}) + "\n")
            counts[split]["text_docs"] += 1
            counts[split]["text_bytes"] += len(text)
    return counts


def prep(split_dir: Path, out: Path, *, vocab_size: int, seq_len: int, tokenizer: Path | None) -> dict:
    """`r1-ds prep` of one split (its real entry point, data_prep.prep.run); returns its stats.json."""
    from data_prep.prep import PrepConfig, run

    cfg = PrepConfig(
        out=str(out),
        text=[str(split_dir / "text.jsonl")],
        code=[str(split_dir / "code")],
        quality_model="none",
        docstring_pairs_per_file=0,
        vocab_size=vocab_size,
        seq_len=seq_len,
        tokenizer=str(tokenizer) if tokenizer else None,
        shard_rows=1024,
    )
    return run(cfg)


def assemble(train_run: Path, heldout_run: Path, pack: Path) -> dict:
    """pack/{tokenizer,train,heldout}: the shards and the one tokenizer, checked by opening them."""
    from data_prep.shards import PackedShards

    tmp = pack.with_name(pack.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(train_run / "tokenizer", tmp / "tokenizer")
    shutil.copytree(train_run / "shards", tmp / "train")
    shutil.copytree(heldout_run / "shards", tmp / "heldout")
    for split in ("train", "heldout"):  # both must name the pack's tokenizer
        meta_path = tmp / split / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["tokenizer"] = "../tokenizer"
        meta_path.write_text(json.dumps(meta, indent=2))
    shutil.rmtree(pack, ignore_errors=True)
    tmp.rename(pack)
    out = {}
    for split in ("train", "heldout"):
        ds = PackedShards(str(pack / split))
        out[split] = {
            "sequences": len(ds),
            "seq_len": ds.seq_len,
            "tokens": len(ds) * ds.seq_len,
            "vocab_size": ds.vocab_size,
            "dtype": ds.meta["dtype"],
            "mib": sum(f.stat().st_size for f in (pack / split).iterdir()) / MB,
        }
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    t0 = time.perf_counter()
    raw = out / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    counts = write_raw(args, raw)
    t_raw = time.perf_counter() - t0
    print(f"raw corpus ({t_raw:.0f} s): {json.dumps(counts)}", flush=True)
    prep(raw / "train", out / "prep_train", vocab_size=args.vocab_size, seq_len=args.seq_len, tokenizer=None)
    t_train = time.perf_counter() - t0 - t_raw
    prep(
        raw / "heldout",
        out / "prep_heldout",
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        tokenizer=out / "prep_train" / "tokenizer",
    )
    t_prep = time.perf_counter() - t0 - t_raw
    summary = assemble(out / "prep_train", out / "prep_heldout", out / "pack")
    report = {
        "inputs": counts,
        "pack": summary,
        "seconds": {"raw": t_raw, "prep_train": t_train, "prep_all": t_prep},
        "settings": {k: v for k, v in vars(args).items()},
    }
    (out / "pack" / "corpus.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
