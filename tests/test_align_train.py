"""Alignment training on the sample corpus's triples: held-out retrieval above chance, exact resume, bad rows
counted, refused layouts and a wrong image-tower checkpoint named. One process (a world of one) unless marked."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from r1_ds.align import info_nce
from r1_ds.local_ranks import run_distributed
from r1_ds.metrics import read_metrics

TOWER = {"align.image_tower": "RN50", "align.image_size": 64}  # random-init, small input: seconds on CPU


def write_sample_triples(out: str, *, images: int = 96, code_files: int = 30) -> str:
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
        lines.append(
            json.dumps(
                {
                    "id": rec["id"],
                    "kind": "image-text-code" if code else "image-text",
                    "image": f"corpus/images/{rec['image']}",
                    "image_views": [],
                    "text": rec["caption"],
                    "code": code,
                    "source": "sample",
                }
            )
        )
        texts += [rec["caption"], code or ""]
    for path in sorted((corpus.root / "code").rglob("*.py"))[:code_files]:
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for pair in docstring_pairs(source, AugmentConfig()):
            lines.append(
                json.dumps(
                    {
                        "id": f"{path.name}::{pair['name']}",
                        "kind": "text-code",
                        "image": None,
                        "image_views": [],
                        "text": pair["text"],
                        "code": pair["code"],
                    }
                )
            )
            texts += [pair["text"], pair["code"]]
    lines.append(json.dumps({"id": "bad:kind", "kind": "video-text", "text": "a clip", "image": None}))
    os.makedirs(os.path.join(out, "triples"), exist_ok=True)
    with open(os.path.join(out, "triples", "triples.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    train_tokenizer(texts, os.path.join(out, "tokenizer"), vocab_size=512)
    return out


def align_overrides(data_dir: str, out_dir: str, **more) -> dict:
    return {
        "deepspeed_config": "ds_configs/tiny_cpu.json",
        "model.preset": "tiny",
        "output_dir": out_dir,
        "align.objective": "align",
        "align.triples": data_dir,
        "align.proj_dim": 32,
        "align.image_hidden": 128,
        "align.text_len": 32,
        "align.code_len": 64,
        "schedule.global_batch": 32,
        "data.micro_batch": 16,
        "schedule.steps": 60,
        "schedule.warmup_steps": 5,
        "schedule.lr": 3e-3,
        "align.eval_every": 60,
        "align.mine_every": 10,
        "align.mine_warmup": 20,
        "log.progress": False,
        "log.tensorboard": False,
        "seed": 3,
        **TOWER,
        **more,
    }


def train_here(overrides: dict):
    """Train in this process (a spawned rank: the harness owns the process group, so runs can follow each other)."""
    from r1_ds.config import load_train_config
    from r1_ds.train import train

    return train(load_train_config(None, overrides))


def _state(engine) -> dict:
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


RESUME = {
    "schedule.steps": 4,
    "schedule.warmup_steps": 1,
    "checkpoint.every": 2,
    "align.mine_every": 1,
    "align.mine_warmup": 1,
    "align.eval_every": 2,
    "schedule.global_batch": 16,
    "data.micro_batch": 8,
}


def _one_rank_runs(data_dir: str, tmp: str, ds_json: str) -> dict:
    """On one spawned rank: a 40-step run (retrieval), a 4-step run and its resume from step 2, and the one-process
    reference of the ZeRO-1 run."""
    reference = _zero1_run(data_dir, os.path.join(tmp, "one"), ds_json, 16)
    train_here(align_overrides(data_dir, os.path.join(tmp, "long"), **{"schedule.steps": 40, "align.eval_every": 20}))
    full = _state(train_here(align_overrides(data_dir, os.path.join(tmp, "full"), **RESUME)))
    src, dst = os.path.join(tmp, "full", "checkpoints"), os.path.join(tmp, "resumed", "checkpoints")
    shutil.copytree(os.path.join(src, "global_step2"), os.path.join(dst, "global_step2"))
    with open(os.path.join(dst, "latest"), "w") as f:
        f.write("global_step2")
    resumed = _state(train_here(align_overrides(data_dir, os.path.join(tmp, "resumed"), **RESUME)))
    train_here(
        align_overrides(
            data_dir,
            os.path.join(tmp, "lm"),
            **{
                "align.objective": "lm+align",
                "align.weight": 0.5,
                "data.seq_len": 32,
                "schedule.steps": 2,
                "schedule.warmup_steps": 0,
                "align.eval_every": 100,
            },
        )
    )  # synthetic LM data beside the triples
    return {"full": full, "resumed": resumed, "zero1_reference": reference}


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    return write_sample_triples(str(tmp_path_factory.mktemp("align_sample")))


@pytest.fixture(scope="module")
def zero1_json(tmp_path_factory) -> str:
    with open("ds_configs/tiny_cpu.json") as f:
        ds = json.load(f)
    ds["zero_optimization"] = {"stage": 1}
    path = str(tmp_path_factory.mktemp("align_ds") / "zero1.json")
    with open(path, "w") as f:
        json.dump(ds, f)
    return path


@pytest.fixture(scope="module")
def runs(sample_dir, tmp_path_factory, zero1_json):
    tmp = str(tmp_path_factory.mktemp("align_runs"))
    out = run_distributed(_one_rank_runs, 1, sample_dir, tmp, zero1_json, timeout=300)[0]
    return {"dir": tmp, **out}


def _two_rank_body(data_dir: str, out: str, ds_json: str, grad_args: tuple) -> dict:
    """On each of 2 spawned ranks: the gathered info_nce gradients, then the 2-step alignment run under ZeRO-1 and
    under ZeRO-2 (the same run: gradients reduce-scattered instead of all-reduced)."""
    return {
        "grads": _grads_on_rank(*grad_args),
        "params": _zero1_run(data_dir, out, ds_json, 8),
        "zero2_params": _zero1_run(data_dir, out + "_zero2", _with_zero_stage(ds_json, 2), 8),
        "zero2_ds": json.load(open(os.path.join(out + "_zero2", "ds_config.json"))),
    }


def _with_zero_stage(ds_json: str, stage: int) -> str:
    """A copy of the DeepSpeed JSON `ds_json` with ZeRO stage `stage`, beside it."""
    with open(ds_json) as f:
        ds = json.load(f)
    ds["zero_optimization"] = {"stage": stage}
    path = os.path.join(os.path.dirname(ds_json), f"zero{stage}.json")
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(path + ".tmp", "w") as f:
            json.dump(ds, f)
        os.replace(path + ".tmp", path)
    if dist.is_initialized():
        dist.barrier()
    return path


GRAD_CASE = (8, 6, 3, [1, 1, 0, 1, 1, 0, 0, 1], 7.0)  # rows, dim, seed, mask (3 valid rows on rank 0, 2 on 1), scale


def _features(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1), F.normalize(torch.randn(n, d, generator=g), dim=1)


@pytest.fixture(scope="module")
def two_ranks(sample_dir, tmp_path_factory, zero1_json):
    n, d, seed, mask, scale = GRAD_CASE
    a, b = _features(n, d, seed)
    out = str(tmp_path_factory.mktemp("align_two") / "two")
    return run_distributed(
        _two_rank_body, 2, sample_dir, out, zero1_json, (a, b, torch.tensor(mask, dtype=torch.bool), scale), timeout=300
    )


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


@pytest.mark.slow
def test_lm_plus_align_adds_the_weighted_alignment_loss_to_the_lm_loss(runs):
    for rec in metrics_of(os.path.join(runs["dir"], "lm")).values():
        align = sum(
            rec[f"align/{p}/weight"] * rec[f"align/{p}/loss"] for p in ("image-text", "image-code", "text-code")
        )
        assert 0 < rec["lm_loss"] < 10
        assert rec["loss"] == pytest.approx(rec["lm_loss"] + 0.5 * align, rel=1e-5)  # what the step minimised


def _zero1_run(data_dir: str, out: str, ds_json: str, micro: int) -> dict:
    """2 steps of global batch 16 under ZeRO-1, as `micro` rows per rank (16 on one rank, 8 on each of two)."""
    engine = train_here(
        align_overrides(
            data_dir,
            out,
            **{
                "deepspeed_config": ds_json,
                "schedule.steps": 2,
                "schedule.warmup_steps": 0,
                "schedule.global_batch": 16,
                "data.micro_batch": micro,
                "align.eval_every": 100,
                "align.mine_every": 1,
                "align.mine_warmup": 0,
            },
        )
    )
    return _state(engine)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["params", "zero2_params"])
def test_zero1_on_two_ranks_trains_like_one_process_over_the_whole_batch(two_ranks, runs, run):
    two = [r[run] for r in two_ranks]  # ZeRO-1 and ZeRO-2 both match the one-process ZeRO-1 run
    assert two_ranks[0]["zero2_ds"]["zero_optimization"]["stage"] == 2
    for name, value in runs["zero1_reference"].items():
        assert torch.equal(two[0][name], two[1][name]), name  # replicas agree
        # Adam's first steps move each weight by about lr * sign(grad): where a gradient is within summation noise
        # of 0, two correct runs may step a few weights differently (here up to 2e-4 of the lr's 3e-3). A wrong
        # partition, gather or average moves most weights of a tensor differently, so count the weights that differ.
        off = ((two[0][name] - value).abs() > 1e-5).float().mean().item()
        assert off < 1e-3, (name, off, (two[0][name] - value).abs().max())


def _grads_on_rank(full_a, full_b, mask, scale):
    """This rank's half of the batch through the gathered loss; returns the all-reduced mean of the gradients
    (what DeepSpeed applies) w.r.t. the features and the logit scale."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    n = full_a.shape[0] // world
    rows = slice(rank * n, (rank + 1) * n)
    a = full_a[rows].clone().requires_grad_()
    b = full_b[rows].clone().requires_grad_()
    s = torch.tensor(scale, requires_grad=True)
    loss = info_nce(a, b, s, mask=mask[rows], group=dist.group.WORLD)
    loss.backward()
    grad_a = torch.zeros_like(full_a)
    grad_b = torch.zeros_like(full_b)
    grad_a[rows], grad_b[rows] = a.grad, b.grad
    summed = [grad_a, grad_b, s.grad.reshape(1), loss.detach().reshape(1)]
    for t in summed:
        dist.all_reduce(t)
    return [t / world if i >= 2 else t for i, t in enumerate(summed)]  # feature grads: each rank owns its rows


@pytest.mark.slow
def test_gathered_loss_on_two_ranks_gives_the_one_process_gradient(two_ranks):
    n, d, seed, mask, scale = GRAD_CASE
    a, b = _features(n, d, seed)
    mask = torch.tensor(mask, dtype=torch.bool)
    ref_a, ref_b = a.clone().requires_grad_(), b.clone().requires_grad_()
    s = torch.tensor(scale, requires_grad=True)
    ref = info_nce(ref_a, ref_b, s, mask=mask)
    ref.backward()
    # Each rank's feature gradient is that of the sum of every rank's loss (the gather's backward sums them),
    # which is world x the one-process loss; an encoder behind the features turns it into a parameter gradient
    # that DeepSpeed averages over the ranks: world x / world. The scale is not gathered: its gradient is the
    # rank mean directly.
    grad_a, grad_b, grad_s, loss = two_ranks[0]["grads"]
    assert torch.allclose(grad_a / 2, ref_a.grad, atol=1e-6), (grad_a / 2 - ref_a.grad).abs().max()
    assert torch.allclose(grad_b / 2, ref_b.grad, atol=1e-6)
    assert float(grad_s) == pytest.approx(float(s.grad), rel=1e-5)
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)  # the mean of the rank losses is the loss


def test_pipeline_and_tensor_layouts_are_refused_with_the_reason(tmp_path):
    from r1_ds.config import ConfigError, load_train_config
    from r1_ds.train import train

    for key in ("parallel.pipe", "parallel.tensor"):
        cfg = load_train_config(None, align_overrides(str(tmp_path), str(tmp_path), **{key: 2}))
        with pytest.raises(ConfigError, match=f"{key}=2 with align.objective=align: .*Fix"):
            train(cfg)


def test_a_wrong_image_tower_checkpoint_is_named(tmp_path):
    from r1_ds.align.image_tower import ImageTowerError, build_image_tower
    from r1_ds.train import user_errors

    assert issubclass(ImageTowerError, user_errors())  # `r1-ds train` exits 2 with the one-line message
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
        def __call__(self, text, add_special_tokens=False, truncation=False, max_length=None):
            return {"input_ids": [ord(c) % 50 for c in text][:max_length]}

    data = build_align_data(parsed, dropped, *images, Tok(), text_len=8, code_len=8, vocab_size=64, held_out_percent=50)
    assert dict(data.dropped) == {
        "duplicate_id": 1,
        "empty_text": 1,
        "empty_code": 1,
        "missing_image": 2,
        "unreadable_image": 1,
        "unknown_kind": 1,
        "broken_json": 2,
    }
    assert sorted(r["id"] for r in data.train + data.held_out) == ["ok", "tc"]


def _tower():
    from r1_ds.align.image_tower import build_image_tower

    return build_image_tower("RN50", None, image_size=64)


def test_resuming_from_a_checkpoint_of_another_objective_is_refused_before_loading(tmp_path):
    from r1_ds.align.trainer import check_align_checkpoint
    from r1_ds.checkpoint import CheckpointError

    (tmp_path / "global_step2").mkdir()
    torch.save({"module": None, "r1_sampler": {}}, tmp_path / "global_step2" / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match="global_step2 is not an alignment checkpoint.*Fix"):
        check_align_checkpoint(str(tmp_path), "global_step2")
    torch.save({"module": None, "r1_align_mine": {}}, tmp_path / "global_step2" / "mp_rank_00_model_states.pt")
    check_align_checkpoint(str(tmp_path), "global_step2")


def test_image_rows_repeat_in_the_sampling_order():
    from r1_ds.align.data import sample_order

    train = [{"image": [torch.zeros(2)]}, {"image": []}, {"image": [torch.zeros(2)]}]
    assert sample_order(train, 1) == [0, 1, 2]
    assert sample_order(train, 3) == [0, 0, 0, 1, 2, 2, 2]


@pytest.mark.slow
def test_export_of_an_alignment_checkpoint_gives_the_lm_folder_and_the_heads(runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1_ds.align import AlignHeads
    from r1_ds.cli import main as cli_main

    run = os.path.join(runs["dir"], "long")
    out = str(tmp_path / "hf")
    assert cli_main(["export", os.path.join(run, "checkpoints"), out]) == 0
    lm = AutoModelForCausalLM.from_pretrained(out)  # the checkpoint's LM, as the run's final save wrote it
    ref = AutoModelForCausalLM.from_pretrained(os.path.join(run, "align", "lm"))
    assert lm.state_dict().keys() == ref.state_dict().keys()
    for name, value in ref.state_dict().items():
        assert torch.equal(lm.state_dict()[name], value), name
    heads = AlignHeads.from_pretrained(os.path.join(out, "align_heads"))
    ref_heads = AlignHeads.from_pretrained(os.path.join(run, "align", "heads"))
    assert heads.config.to_diff_dict() == ref_heads.config.to_diff_dict()
    for name, value in ref_heads.state_dict().items():
        assert torch.equal(heads.state_dict()[name], value), name
    tok = AutoTokenizer.from_pretrained(out)  # the run's tokenizer (the prep folder's) travels with the export
    assert tok("a red circle")["input_ids"]


def test_the_image_embeddings_cache_moves_with_its_prep_folder(tmp_path):
    """A prep folder copied elsewhere (to a machine without open_clip) reads its cache: no tower is built."""
    from PIL import Image

    from r1_ds.align.data import load_image_embeddings, parse_triples

    src = tmp_path / "here"
    (src / "triples").mkdir(parents=True)
    (src / "img").mkdir()
    for name, colour in (("a", "red"), ("b", "blue")):
        Image.new("RGB", (8, 8), colour).save(src / "img" / f"{name}.png")
    rows = [{"id": n, "kind": "image-text", "image": f"img/{n}.png", "text": n} for n in ("a", "b")]
    rows.append({"id": "c", "kind": "image-text", "image": "img/gone.png", "text": "c"})
    (src / "triples" / "triples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def tower():  # mean colour as the "embedding"
        return (lambda x: x), (lambda im: torch.tensor(im.getpixel((0, 0)), dtype=torch.float)), 3

    cache = "triples/image_embeds/t.pt"
    table, failed = load_image_embeddings(
        parse_triples(str(src / "triples" / "triples.jsonl"))[0], str(src / cache), tower
    )
    shutil.copytree(src, tmp_path / "there")
    shutil.rmtree(src)

    def no_tower():
        raise AssertionError("the cache should have every image")

    moved, moved_failed = load_image_embeddings(
        parse_triples(str(tmp_path / "there" / "triples" / "triples.jsonl"))[0],
        str(tmp_path / "there" / cache),
        no_tower,
    )
    there = str(tmp_path / "there" / "img")
    assert sorted(moved) == [os.path.join(there, "a.png"), os.path.join(there, "b.png")]
    assert moved_failed == {os.path.join(there, "gone.png"): "missing_image"}
    assert torch.equal(moved[os.path.join(there, "a.png")], torch.tensor([255.0, 0, 0]))
    assert [torch.equal(moved[p.replace("here", "there")], e) for p, e in table.items()] == [True, True]
