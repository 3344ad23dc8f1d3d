"""The built-in sample corpus for ``make demo``: made only from what every Python install has, so it runs offline.

- text: the Python documentation topics (``pydoc_data.topics``) cut into ~1,500-character documents, plus
  generated junk that each filter should catch (spam, lorem ipsum, menus, number lists, keyword stuffing, ad copy,
  small-vocabulary babble, exact duplicates, empty and huge documents, non-UTF-8 bytes, broken JSON);
- code: about 200 standard-library modules (``sysconfig.get_paths()['stdlib']``), plus small files in other
  languages and bad files (Python 2 syntax, a missing brace, binary bytes, Latin-1, unknown extension, minified,
  generated, duplicate);
- images: coloured shapes drawn with PIL, each with a caption and the PIL code that draws it (image-text-code
  triples), plus corrupt, truncated, tiny, caption-less, duplicate and missing entries;
- quality labels: pseudo-labels for the demo quality head (documentation prose = 4, generated ad copy / spam = 0).

Everything is generated from fixed seeds: building twice gives identical files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_dir
from data_prep.shapes import BACKGROUNDS, CAPTIONS, COLOURS, SHAPES, draw_shape, png_bytes, shape_code, shape_ops

log = logging.getLogger(__name__)

MANIFEST = "sample_manifest.json"


@dataclass(frozen=True)
class SampleCorpus:
    root: Path
    text: list[Path]
    code: list[Path]
    images: list[Path]
    quality_labels: Path


def build_sample_corpus(
    root: str | Path, *, text_docs: int = 300, code_files: int = 200, images: int = 64, seed: int = 0
) -> SampleCorpus:
    """Write the sample corpus under ``root`` (atomically, once); returns the input paths to feed the pipeline."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        with atomic_dir(root) as tmp:
            counts = {
                "text": _write_text(tmp / "text", tmp / "quality_labels.jsonl", text_docs, seed),
                "code": _write_code(tmp / "code", code_files, seed),
                "images": _write_images(tmp / "images", images, seed),
            }
            (tmp / MANIFEST).write_text(json.dumps({"counts": counts, "seed": seed}, indent=2) + "\n", encoding="utf-8")
        log.info("sample corpus: %s written to %s", counts, root)
    return SampleCorpus(
        root=root,
        text=[root / "text"],
        code=[root / "code"],
        images=[root / "images" / "captions.jsonl"],
        quality_labels=root / "quality_labels.jsonl",
    )


# ----------------------------------------------------------------------------------------------------------- text
def python_doc_chunks(min_chars: int = 1500) -> list[tuple[str, str]]:
    """(topic name, text) chunks of the pydoc topics: paragraphs joined until ``min_chars`` is reached."""
    from pydoc_data.topics import topics

    chunks = []
    for name in sorted(topics):
        cur: list[str] = []
        part = 0
        for para in topics[name].split("\n\n"):
            cur.append(para)
            if sum(map(len, cur)) >= min_chars:
                chunks.append((f"{name}#{part}", "\n\n".join(cur)))
                cur, part = [], part + 1
        if cur:
            chunks.append((f"{name}#{part}", "\n\n".join(cur)))
    return chunks


_SPAM_WORDS = ("cheap", "best", "price", "buy", "now", "deal", "free", "discount", "offer", "sale", "watches", "pills")
_AD_NOUNS = (
    "sneakers",
    "headphones",
    "sofas",
    "watches",
    "blenders",
    "jackets",
    "mattresses",
    "laptops",
    "grills",
    "backpacks",
    "lamps",
    "suitcases",
    "kettles",
    "monitors",
    "scooters",
    "cameras",
)
_AD_ADJ = (
    "exclusive",
    "premium",
    "luxurious",
    "stylish",
    "unbeatable",
    "limited",
    "amazing",
    "incredible",
    "affordable",
    "trendy",
    "top-rated",
    "bestselling",
    "must-have",
    "elegant",
    "innovative",
    "popular",
)
_AD_TEMPLATES = (
    "Discover our {a} collection of {a} {n} at prices you will love.",
    "Shop now and save big on {a} {n} with free shipping on every order.",
    "Hurry, this {a} offer on {n} ends soon, so grab yours today.",
    "Thousands of happy customers already own our {a} {n} and {a} {n}.",
    "Sign up for our newsletter to get {a} deals on {n} delivered to your inbox.",
    "Upgrade your home with {a} {n} that everyone is talking about.",
    "Order today and enjoy {a} savings on {n}, {n} and much more.",
    "Our {a} {n} are back in stock, with the lowest prices of the season.",
    "Treat yourself to {a} {n} and feel the difference from the very first day.",
    "Every purchase of {n} comes with a {a} gift and a money-back guarantee.",
    "Looking for {a} {n}? You have come to the right place.",
    "Join the club to unlock {a} rewards when you buy {n} or {n}.",
)


def ad_copy(rng: random.Random, sentences: int = 10) -> str:
    """Marketing text with varied words: passes the heuristic rules, a quality classifier should reject it."""
    out = []
    for t in rng.sample(_AD_TEMPLATES, sentences):
        while "{a}" in t or "{n}" in t:
            t = t.replace("{a}", rng.choice(_AD_ADJ), 1).replace("{n}", rng.choice(_AD_NOUNS), 1)
        out.append(t)
    return "\n".join(" ".join(out[i : i + 3]) for i in range(0, len(out), 3))


def junk_documents(rng: random.Random) -> list[tuple[str, str]]:
    """(kind, text) junk the heuristic filters must drop (one or more of each kind)."""
    docs = []
    for _ in range(3):
        docs.append(("spam", " ".join(rng.choice(_SPAM_WORDS) for _ in range(300))))
    lorem = (
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
        "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris. "
    )
    docs.append(("lorem_ipsum", (lorem * 8).strip()))
    menu = ["Home", "About us", "Products", "Blog", "Contact", "Login", "Register", "Cart", "Help", "Careers"]
    docs.append(("menu", "\n".join(rng.sample(menu, len(menu)) * 6)))
    docs.append(("number_list", "\n".join(f"{i}. {rng.randint(0, 10**6)}" for i in range(200))))
    docs.append(
        (
            "keyword_stuffing",
            " ".join(
                f"cheap flights {rng.choice(['london', 'paris', 'rome'])} cheap hotels best cheap flights deals"
                for _ in range(40)
            ),
        )
    )
    for _ in range(8):
        docs.append(("ad_copy", ad_copy(rng)))
    babble = ("the", "cat", "dog", "and", "with", "sees", "runs", "to", "of", "big", "red", "house")
    for _ in range(2):  # well-formed sentences from 12 words: only the entropy rule catches it
        docs.append(
            (
                "small_vocabulary",
                "\n".join(" ".join(rng.choice(babble) for _ in range(12)).capitalize() + "." for _ in range(30)),
            )
        )
    return docs


def _write_text(folder: Path, labels_path: Path, n_docs: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    chunks = python_doc_chunks()
    # Spread the selection over all topics when fewer documents are asked for.
    step = max(1, len(chunks) // max(n_docs, 1))
    chosen = chunks[::step][:n_docs]
    records: list[Any] = [{"id": f"pydoc:{name}", "text": text, "kind": "python_docs"} for name, text in chosen]
    for i, (kind, text) in enumerate(junk_documents(rng)):
        records.append({"id": f"junk:{kind}:{i}", "text": text, "kind": kind})
    for name, text in chosen[:5]:  # exact duplicates
        records.append({"id": f"dup:{name}", "text": text, "kind": "duplicate"})
    records += [
        {"id": "junk:empty", "text": "", "kind": "empty"},
        {"id": "junk:whitespace", "text": "  \n\t \n", "kind": "empty"},
        {"id": "junk:huge", "text": (chosen[0][1] + "\n\n") * (1_100_000 // len(chosen[0][1]) + 1), "kind": "huge"},
    ]
    rng.shuffle(records)
    with open(folder / "docs.jsonl", "wb") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False).encode("utf-8") + b"\n")
        f.write(b'{"id": "bad:json", "text": "unterminated\n')  # broken JSON line
        f.write(b'{"id": "bad:field", "title": "no text field"}\n')
        f.write(b'{"id": "bad:bytes", "text": "caf\xe9 au lait"}\n')  # Latin-1 byte inside a JSONL line
    (folder / "latin1_notes.txt").write_bytes("Notes on the café menu, written in Latin-1.\n".encode("latin-1"))
    (folder / "about.md").write_text(chunks[-1][1], encoding="utf-8")
    (folder / "blob.bin").write_bytes(bytes(range(256)))
    # Pseudo-labels for the demo quality head: documentation prose 4, ad copy and spam 0 (other seed than the corpus).
    label_rng = random.Random(seed + 1)
    labels = [{"text": text, "score": 4} for _, text in chunks[1::9][:32]]
    labels += [{"text": ad_copy(label_rng), "score": 0} for _ in range(24)]
    labels += [{"text": text, "score": 0} for kind, text in junk_documents(label_rng) if kind != "ad_copy"]
    with open(labels_path, "w", encoding="utf-8") as f:
        for rec in labels:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"documents": len(records) + 3 + 3, "quality_labels": len(labels)}


# ----------------------------------------------------------------------------------------------------------- code
def stdlib_files(n_files: int, *, min_bytes: int = 1500, max_bytes: int = 40_000) -> list[tuple[Path, Path]]:
    """(absolute path, path relative to stdlib) of ``n_files`` standard-library modules, evenly spread."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "__pycache__", "test", "tests", "idle_test")
        )
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.endswith(".py") and min_bytes <= path.stat().st_size <= max_bytes:
                found.append((path, path.relative_to(root)))
    step = max(1, len(found) // max(n_files, 1))
    return found[::step][:n_files]


EXTRA_CODE = {
    "ok/hello.c": '#include <stdio.h>\n\nint main(void) {\n    printf("hello\\n");\n    return 0;\n}\n',
    "ok/hello.rs": 'fn main() {\n    let name = "world";\n    println!("hello {}", name);\n}\n',
    "ok/hello.js": "function greet(name) {\n  return `hello ${name}`;\n}\nconsole.log(greet('world'));\n",
    "ok/hello.go": 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello")\n}\n',
    "ok/Hello.java": (
        "public class Hello {\n    public static void main(String[] args) {\n"
        '        System.out.println("hello");\n    }\n}\n'
    ),
    "ok/run_tool": "#!/usr/bin/env python3\nimport sys\n\nprint(sys.argv[1:])\n",
    "bad/py2_print.py": "import sys\nprint 'hello from python 2'\n",
    "bad/missing_paren.py": "def f(x:\n    return x + 1\n",
    "bad/missing_brace.c": "int main(void) {\n    return 0;\n",
    "bad/empty.py": "",
    "bad/generated.py": "# This file is automatically generated. Do not edit.\nTABLE = {'a': 1, 'b': 2}\n",
    "bad/minified.js": "var a=" + "[" + ",".join(str(i) for i in range(400)) + "];console.log(a);\n",
    "bad/notes.xyz": "this extension is not a known programming language\n",
}


def _write_code(folder: Path, n_files: int, seed: int) -> dict[str, int]:
    files = stdlib_files(n_files)
    for src, rel in files:
        dst = folder / "stdlib" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    for rel, text in EXTRA_CODE.items():
        dst = folder / "extra" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text, encoding="utf-8")
    (folder / "extra" / "bad" / "blob.py").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")
    (folder / "extra" / "bad" / "latin1.py").write_bytes("# caf\xe9\nx = 1\n".encode("latin-1"))
    if files:  # an exact duplicate of the first stdlib file
        (folder / "extra" / "dup").mkdir(parents=True, exist_ok=True)
        (folder / "extra" / "dup" / files[0][1].name).write_bytes(files[0][0].read_bytes())
    return {"files": len(files) + len(EXTRA_CODE) + 2 + bool(files)}


# --------------------------------------------------------------------------------------------------------- images
def _write_images(folder: Path, n_images: int, seed: int) -> dict[str, int]:
    from PIL import Image

    rng = random.Random(seed + 2)
    (folder / "img").mkdir(parents=True)
    rows: list[bytes] = []
    for i in range(n_images):
        shape = SHAPES[i % len(SHAPES)]
        colour = list(COLOURS)[(i // len(SHAPES) + i) % len(COLOURS)]
        bg = list(BACKGROUNDS)[i % len(BACKGROUNDS)]
        ops = shape_ops(shape, rng)
        name = f"img/shape_{i:04d}.png"
        (folder / name).write_bytes(png_bytes(draw_shape(ops, COLOURS[colour], BACKGROUNDS[bg])))
        caption = rng.choice(CAPTIONS).format(colour=colour, shape=shape, bg=bg)
        rec = {
            "id": f"shape_{i:04d}",
            "image": name,
            "caption": caption,
            "code": shape_code(ops, COLOURS[colour], BACKGROUNDS[bg]),
            "code_language": "python",
        }
        rows.append(json.dumps(rec).encode())
    good = (folder / "img" / "shape_0000.png").read_bytes()
    (folder / "img" / "truncated.png").write_bytes(good[: len(good) * 3 // 5])
    (folder / "img" / "not_an_image.png").write_bytes(b"this is a text file with a .png name\n")
    (folder / "img" / "tiny.png").write_bytes(png_bytes(Image.new("RGB", (8, 8), "red")))
    rows += [
        json.dumps({"id": "bad:truncated", "image": "img/truncated.png", "caption": "a red circle"}).encode(),
        json.dumps({"id": "bad:not_image", "image": "img/not_an_image.png", "caption": "a blue square"}).encode(),
        json.dumps({"id": "bad:tiny", "image": "img/tiny.png", "caption": "a tiny red square"}).encode(),
        json.dumps({"id": "bad:no_caption", "image": "img/shape_0001.png", "caption": ""}).encode(),
        json.dumps({"id": "bad:missing", "image": "img/does_not_exist.png", "caption": "a green circle"}).encode(),
        rows[0].replace(b'"id": "shape_0000"', b'"id": "dup:shape_0000"'),
        b'{"id": "bad:json", "image": ',
    ]
    (folder / "captions.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    return {"pairs": len(rows)}
