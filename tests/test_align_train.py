"""Alignment training on the sample corpus's triples: held-out retrieval above chance, exact resume, bad rows
counted, refused layouts and a wrong image-tower checkpoint named. One process (a world of one) unless marked."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from r1_ds.metrics import read_metrics
from tests.dist import run_distributed

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
    lines.append(json.dumps({"id": "bad:kind", "kind": "video-text", "text": "a clip", "image": None}))
    os.makedirs(os.path.join(out, "triples"), exist_ok=True)
    with open(os.path.join(out, "triples", "triples.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    train_tokenizer(texts, os.path.join(out, "tokenizer"), vocab_size=512)
    return out


def align_overrides(data_dir: str, out_dir: str, **more) -> dict:
    return {"deepspeed_config": "ds_configs/tiny_cpu.json", "model.preset": "tiny", "output_dir": out_dir,
            "align.objective": "align", "align.triples": data_dir, "align.proj_dim": 32, "align.image_hidden": 128,
            "align.text_len": 32, "align.code_len": 64, "schedule.global_batch": 32, "data.micro_batch": 16,
            "schedule.steps": 60, "schedule.warmup_steps": 5, "schedule.lr": 3e-3, "align.eval_every": 60,
            "align.mine_every": 10, "align.mine_warmup": 20, "log.progress": False, "log.tensorboard": False,
            "seed": 3, **TOWER, **more}


def train_here(overrides: dict):
    """Train in this process (a spawned rank: the harness owns the process group, so runs can follow each other)."""
    from r1_ds.config import load_train_config
    from r1_ds.train import train

    return train(load_train_config(None, overrides))


def _state(engine) -> dict:
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


RESUME = {"schedule.steps": 4, "schedule.warmup_steps": 1, "checkpoint.every": 2, "align.mine_every": 1,
          "align.mine_warmup": 1, "align.eval_every": 2, "schedule.global_batch": 16, "data.micro_batch": 8}


def _one_rank_runs(data_dir: str, tmp: str) -> dict:
    """On one spawned rank: a 40-step run (retrieval), then a 4-step run and its resume from step 2."""
    train_here(align_overrides(data_dir, os.path.join(tmp, "long"), **{"schedule.steps": 40, "align.eval_every": 20}))
    full = _state(train_here(align_overrides(data_dir, os.path.join(tmp, "full"), **RESUME)))
    src, dst = os.path.join(tmp, "full", "checkpoints"), os.path.join(tmp, "resumed", "checkpoints")
    shutil.copytree(os.path.join(src, "global_step2"), os.path.join(dst, "global_step2"))
    with open(os.path.join(dst, "latest"), "w") as f:
        f.write("global_step2")
    resumed = _state(train_here(align_overrides(data_dir, os.path.join(tmp, "resumed"), **RESUME)))
    return {"full": full, "resumed": resumed}


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    return write_sample_triples(str(tmp_path_factory.mktemp("align_sample")))


@pytest.fixture(scope="module")
def runs(sample_dir, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("align_runs"))
    out = run_distributed(_one_rank_runs, 1, sample_dir, tmp, timeout=300)[0]
    return {"dir": tmp, **out}


def metrics_of(run_dir: str) -> dict:
    return {r["step"]: r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))}


@pytest.mark.slow
def test_held_out_retrieval_ends_well_above_chance_and_bad_rows_are_counted(runs):
    out = os.path.join(runs["dir"], "long")
    history = metrics_of(out)
    last, first = history[40], history[min(history)]
    for q, c in (("image", "text"), ("text", "image"), ("text", "code"), ("code", "text")):
        r1, chance = last[f"eval/{q}->{c}/R@1"], last[f"eval/{q}->{c}/chance@1"]
        assert r1 >= 2.5 * chance, (q, c, r1, chance)
    for pair in ("image-text", "image-code", "text-code"):
        assert last[f"align/{pair}/loss"] < 0.7 * first[f"align/{pair}/loss"], pair
        assert last[f"align/{pair}/mine"] is not None and 0.5 <= last[f"align/{pair}/weight"] <= 2.0
        assert 0.01 <= last[f"align/{pair}/temperature"] <= 1.0
    with open(os.path.join(out, "align_data.json")) as f:
        dropped = json.load(f)["dropped"]
    # the sample corpus's bad image rows, the unknown kind added above, same-named docstring pairs in one file
    assert dropped.pop("unreadable_image") == 2 and dropped.pop("missing_image") == 1
    assert dropped.pop("empty_text") == 1 and dropped.pop("broken_json") == 1 and dropped.pop("unknown_kind") == 1
    assert set(dropped) <= {"duplicate_id"}
    from r1_ds.align import AlignHeads

    heads = AlignHeads.from_pretrained(os.path.join(out, "align", "heads"))
    assert heads.config.proj_dim == 32


@pytest.mark.slow
def test_resume_equals_the_uninterrupted_run(runs):
    a, b = metrics_of(os.path.join(runs["dir"], "full")), metrics_of(os.path.join(runs["dir"], "resumed"))
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        for key, value in a[step].items():
            if key not in ("time", "elapsed_s", "pairs_per_s", "peak_mem_gib"):
                assert b[step][key] == value, (step, key)
    assert a[4]["align/image-text/weight"] != 1.0  # the weights moved, so their state had to be restored
    for name, value in runs["resumed"].items():
        assert torch.equal(value, runs["full"][name]), name


def _zero1_run(data_dir: str, out: str, ds_json: str, micro: int) -> dict:
    engine = train_here(align_overrides(data_dir, out, **{
        "deepspeed_config": ds_json, "schedule.steps": 2, "schedule.warmup_steps": 0, "schedule.global_batch": 16,
        "data.micro_batch": micro, "align.eval_every": 100, "align.mine_every": 1, "align.mine_warmup": 0}))
    return _state(engine)


@pytest.mark.slow
def test_zero1_on_two_ranks_trains_like_one_process_over_the_whole_batch(sample_dir, tmp_path):
    with open("ds_configs/tiny_cpu.json") as f:
        ds = json.load(f)
    ds["zero_optimization"] = {"stage": 1}
    ds_json = str(tmp_path / "zero1.json")
    with open(ds_json, "w") as f:
        json.dump(ds, f)
    two = run_distributed(_zero1_run, 2, sample_dir, str(tmp_path / "two"), ds_json, 8, timeout=240)
    one = run_distributed(_zero1_run, 1, sample_dir, str(tmp_path / "one"), ds_json, 16, timeout=240)[0]
    for name, value in one.items():
        assert torch.equal(two[0][name], two[1][name]), name  # replicas agree
        assert torch.allclose(two[0][name], value, rtol=1e-4, atol=1e-5), (name, (two[0][name] - value).abs().max())


def test_pipeline_and_tensor_layouts_are_refused_with_the_reason(sample_dir, tmp_path):
    from r1_ds.config import ConfigError, load_train_config
    from r1_ds.train import train

    for key in ("parallel.pipe", "parallel.tensor"):
        cfg = load_train_config(None, align_overrides(sample_dir, str(tmp_path), **{key: 2}))
        with pytest.raises(ConfigError, match=f"{key}=2 with align.objective=align: .*Fix"):
            train(cfg)


def test_a_wrong_image_tower_checkpoint_is_named(tmp_path):
    from r1_ds.align.image_tower import ImageTowerError, build_image_tower

    wrong = tmp_path / "not_rn50.pt"
    torch.save({"visual.conv1.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ImageTowerError, match=r"not_rn50\.pt.*does not fit the RN50 image tower"):
        build_image_tower("RN50", str(wrong), image_size=64)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ImageTowerError, match=r"junk\.pt.*not a readable torch checkpoint"):
        build_image_tower("RN50", str(junk), image_size=64)
    with pytest.raises(ImageTowerError, match="does not exist"):
        build_image_tower("RN50", str(tmp_path / "nowhere.pt"))
    visual, _, _ = build_image_tower("RN50", None, image_size=64, seed=1)
    right = tmp_path / "rn50.pt"
    torch.save({f"visual.{k}": v for k, v in visual.state_dict().items()}, right)
    loaded, _, _ = build_image_tower("RN50", str(right), image_size=64, seed=2)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in visual.state_dict().items())


def test_bad_rows_are_dropped_and_counted_by_reason(tmp_path):
    from PIL import Image

    from r1_ds.align.data import build_align_data, load_image_embeddings, parse_triples

    (tmp_path / "triples").mkdir()
    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    good = {"kind": "image-text-code", "image": "ok.png", "text": "a red square", "code": "fill='red'"}
    rows = [
        {**good, "id": "ok"},
        {**good, "id": "ok"},  # duplicate_id
        {**good, "id": "t1", "text": "   "},  # empty_text
        {**good, "id": "c1", "code": ""},  # empty_code
        {**good, "id": "m1", "image": "gone.png"},  # missing_image (no such file)
        {**good, "id": "m2", "image": None},  # missing_image (no field)
        {**good, "id": "u1", "image": "broken.png"},  # unreadable_image
        {**good, "id": "k1", "kind": "audio-text"},  # unknown_kind
        {"id": "tc", "kind": "text-code", "text": "adds one", "code": "def f(x): return x + 1", "image": None},
    ]
    lines = [json.dumps(r) for r in rows] + ['{"id": "j1", "kind": ', "[1, 2]"]  # broken_json twice
    (tmp_path / "triples" / "triples.jsonl").write_text("\n".join(lines) + "\n")
    parsed, dropped = parse_triples(str(tmp_path / "triples" / "triples.jsonl"))
    images = load_image_embeddings(parsed, str(tmp_path / "cache.pt"), lambda: _tower())

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 50 for c in text]}

    data = build_align_data(parsed, dropped, *images, Tok(), text_len=8, code_len=8, vocab_size=64,
                            held_out_percent=50)
    assert dict(data.dropped) == {"duplicate_id": 1, "empty_text": 1, "empty_code": 1, "missing_image": 2,
                                  "unreadable_image": 1, "unknown_kind": 1, "broken_json": 2}
    assert sorted(r["id"] for r in data.train + data.held_out) == ["ok", "tc"]


def _tower():
    from r1_ds.align.image_tower import build_image_tower

    return build_image_tower("RN50", None, image_size=64)
