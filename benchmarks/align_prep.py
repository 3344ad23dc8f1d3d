"""A small, self-contained prep folder for alignment runs on a machine that cannot run `r1-ds prep` (the GPU image
lacks its filters' packages and open_clip): the sample corpus's triples, their tokenizer and images, and the frozen
image tower's embeddings cached beside the triples, so training there reads the cache and never builds the tower.

    python benchmarks/align_prep.py runs/align_data                 # prep the sample corpus, then copy and embed
    python benchmarks/align_prep.py runs/align_data --from runs/prep # copy an existing prep folder instead

The tower settings (--image-tower, --image-size, --seed) must be those of the training run: they key the cache.
Carry the folder to the GPU machine (a few MB) and train with `--set align.triples=runs/align_data`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

log = logging.getLogger("align_prep")


def copy_prep(src: str, dst: str) -> None:
    """triples/ (its views too), tokenizer/ and every image the triples name, at the same relative paths."""
    from r1_ds.align.data import parse_triples

    triples = os.path.join(src, "triples", "triples.jsonl")
    rows, _ = parse_triples(triples)
    shutil.copytree(
        os.path.join(src, "triples"),
        os.path.join(dst, "triples"),
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("image_embeds"),
    )
    shutil.copytree(os.path.join(src, "tokenizer"), os.path.join(dst, "tokenizer"), dirs_exist_ok=True)
    src_abs = os.path.abspath(src)
    for path in sorted({p for r in rows if r.image for p in [r.image, *r.views]}):
        if os.path.isfile(path) and path.startswith(src_abs + os.sep):
            target = os.path.join(dst, os.path.relpath(path, src_abs))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(path, target)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the folder to write (its triples/, tokenizer/ and images)")
    p.add_argument("--from", dest="src", help="an existing `r1-ds prep` folder (default: prep the sample corpus)")
    p.add_argument("--vocab-size", type=int, default=8192, help="tokenizer vocabulary when prepping")
    p.add_argument("--image-tower", default="RN50")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1234, help="the training run's seed (a random-init tower's seed)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from r1_ds.align.data import load_image_embeddings, parse_triples
    from r1_ds.align.image_tower import build_image_tower, embeddings_cache

    with tempfile.TemporaryDirectory(prefix="align_prep_") as scratch:
        src = args.src
        if not src:
            src = os.path.join(scratch, "prep")
            subprocess.run(
                [sys.executable, "-m", "data_prep", "--out", src, "--vocab-size", str(args.vocab_size)],
                cwd=ROOT,
                check=True,
            )
        copy_prep(src, args.out)
    path = os.path.join(args.out, "triples", "triples.jsonl")
    rows, dropped = parse_triples(path)
    cache = embeddings_cache(path, args.image_tower, None, args.image_size, args.seed)  # the trainer's
    table, failed = load_image_embeddings(
        rows, cache, lambda: build_image_tower(args.image_tower, None, image_size=args.image_size, seed=args.seed)
    )
    log.info(
        "%s: %d rows (%d dropped while reading), %d image embeddings cached in %s (%d images failed)",
        args.out,
        len(rows),
        sum(dropped.values()),
        len(table),
        cache,
        len(failed),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
