"""Alignment training on the sample corpus's triples: held-out retrieval above chance, exact resume, bad rows
counted, refused layouts and a wrong image-tower checkpoint named. One process (a world of one) unless marked."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from r1_ds.metrics import read_metrics

TOWER = {"align.image_tower": "RN50", "align.image_size": 64}  # random-init, small input: seconds on CPU


def write_sample_triples(out: str, *, images: int = 64, code_files: int = 30) -> str:
    """A prep-shaped folder OUT with triples/triples.jsonl (the sample corpus's shapes as image-text-code triples,
    its bad image rows kept, docstring/code pairs of a few standard-library files) and tokenizer/."""
    from data_prep.augment import AugmentConfig, docstring_pairs
    from data_prep.sample_corpus import build_sample_corpus
    from data_prep.tokenizer_train import train_tokenizer

    corpus = build_sample_corpus(os.path.join(out, "corpus"), text_docs=2, code_files=code_files, images=images)
    lines, texts = [], []
    for raw in (corpus.root / "images" / "captions.jsonl").read_text().splitlines():
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            lines.append(raw)  # the corpus's broken line stays broken
            continue
        code = rec.get("code")
        lines.append(json.dumps({"id": rec["id"], "kind": "image-text-code" if code else "image-text",
                                 "image": f"corpus/images/{rec['image']}", "image_views": [],
                                 "text": rec["caption"], "code": code, "source": "sample"}))
        texts += [rec["caption"], code or ""]
    for path in sorted((corpus.root / "code").rglob("*.py"))[:code_files]:
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for pair in docstring_pairs(source, AugmentConfig()):
            lines.append(json.dumps({"id": f"{path.name}::{pair['name']}", "kind": "text-code", "image": None,
                                     "image_views": [], "text": pair["text"], "code": pair["code"]}))
            texts += [pair["text"], pair["code"]]
    os.makedirs(os.path.join(out, "triples"), exist_ok=True)
    with open(os.path.join(out, "triples", "triples.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    train_tokenizer(texts, os.path.join(out, "tokenizer"), vocab_size=512)
    return out


def align_overrides(data_dir: str, out_dir: str, **more) -> dict:
    return {"deepspeed_config": "ds_configs/tiny_cpu.json", "model.preset": "tiny", "output_dir": out_dir,
            "align.objective": "align", "align.triples": data_dir, "align.proj_dim": 32, "align.image_hidden": 128,
            "align.text_len": 32, "align.code_len": 96, "schedule.global_batch": 32, "data.micro_batch": 16,
            "schedule.steps": 60, "schedule.warmup_steps": 5, "schedule.lr": 3e-3, "align.eval_every": 60,
            "align.mine_every": 10, "align.mine_warmup": 20, "log.progress": False, "log.tensorboard": False,
            "seed": 3, **TOWER, **more}


def train_here(overrides: dict):
    from r1_ds.config import load_train_config
    from r1_ds.train import shutdown_distributed, train

    try:
        return train(load_train_config(None, overrides))
    finally:
        shutdown_distributed()


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    return write_sample_triples(str(tmp_path_factory.mktemp("align_sample")))
