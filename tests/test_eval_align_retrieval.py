"""Retrieval through the encoders of an alignment run: a run's output folder (align/lm, align/heads with random
heads saved by save_pretrained, train_config.json naming a tiny random-init open_clip tower and the prep folder's
tokenizer) evaluated by `r1-ds eval retrieval --align` and by the demo's table, against embeddings computed here
one string at a time, without padding."""

import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from r1_ds.cli import main as cli_main
from r1_ds.evaluation.retrieval import image_text_recall, load_karpathy, paired_recall
from r1_ds.evaluation.synthetic import DATA_DIR
from tests.test_eval_cli import tiny_export
from tests.test_eval_retrieval import register_tiny_clip

TEXT_LEN, CODE_LEN, SEED = 6, 10, 7
KARPATHY = os.path.join(DATA_DIR, "karpathy", "dataset_flickr30k.json")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An alignment run's output folder, as `r1-ds train --set align.objective=align` leaves it."""
    from transformers import AutoTokenizer

    from r1_ds.align import AlignHeads, AlignHeadsConfig

    root = tmp_path_factory.mktemp("align_run")
    tower = register_tiny_clip(root)
    prep = root / "prep"
    AutoTokenizer.from_pretrained(tiny_export()).save_pretrained(prep / "tokenizer")
    (prep / "triples").mkdir()
    with open(prep / "triples" / "triples.jsonl", "w") as f:
        for i in range(8):
            f.write(
                json.dumps(
                    {
                        "id": str(i),
                        "kind": "text-code",
                        "text": f"Return the argument plus {i}.",
                        "code": f"def add_{i}(x):\n    return x + {i}\n",
                    }
                )
                + "\n"
            )
    out = root / "out"
    shutil.copytree(tiny_export(), out / "align" / "lm")
    torch.manual_seed(1)
    heads = AlignHeads(AlignHeadsConfig(hidden_size=64, image_dim=32, proj_dim=16, image_hidden=24))
    heads.set_image_stats(torch.randn(10, 32) * 2 + 1)  # buffers saved with the heads: must be applied
    heads.save_pretrained(out / "align" / "heads")
    (out / "train_config.json").write_text(
        json.dumps(
            {
                "seed": SEED,
                "align": {
                    "objective": "align",
                    "triples": str(prep),
                    "tokenizer": None,
                    "image_tower": tower,
                    "image_tower_checkpoint": None,
                    "image_size": None,
                    "text_len": TEXT_LEN,
                    "code_len": CODE_LEN,
                },
            }
        )
    )
    return out


@torch.no_grad()
def reference_embeddings(run, tower: str = "r1-eval-tiny-clip"):
    """(images, texts, codes) embedders written out here: the tower rebuilt from the run's seed, one string at a
    time through the LM (mean of its last hidden states), the heads' layers applied by hand."""
    import open_clip
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1_ds.align import AlignHeads

    lm = AutoModelForCausalLM.from_pretrained(run / "align" / "lm").eval()
    heads = AlignHeads.from_pretrained(run / "align" / "heads").eval()
    tok = AutoTokenizer.from_pretrained(run.parent / "prep" / "tokenizer")
    torch.manual_seed(SEED)
    visual = open_clip.create_model(tower, pretrained=None).visual.eval()
    preprocess = open_clip.image_transform(32, is_train=False)

    def images(paths):
        x = visual(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths]))
        return F.normalize(heads.image_proj((x - heads.image_mean) / heads.image_std), dim=-1)

    def strings(proj, limit):
        def embed(items):
            pooled = [
                lm.model(torch.tensor([tok(s, add_special_tokens=False).input_ids[:limit]])).last_hidden_state.mean(1)[
                    0
                ]
                for s in items
            ]
            return F.normalize(proj(torch.stack(pooled)), dim=-1)

        return embed

    return images, strings(heads.text_proj, TEXT_LEN), strings(heads.code_proj, CODE_LEN)


def test_eval_retrieval_through_an_alignment_run(run, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    triples = str(run.parent / "prep" / "triples" / "triples.jsonl")
    assert (
        cli_main(
            ["eval", "retrieval", "--align", str(run), "--karpathy", "synthetic", "--triples", triples, "--out", out]
        )
        == 0
    )
    res = json.load(open(out))
    assert (
        res["synthetic"] and "alignment run" in res["image_text"]["encoder"] and "SYNTHETIC" in capsys.readouterr().out
    )
    images, texts, codes = reference_embeddings(run)
    paths, caps, owner = load_karpathy(KARPATHY)
    assert res["image_text"]["images"] == 24 and res["image_text"]["captions"] == 120
    for key, value in image_text_recall(images(paths) @ texts(caps).T, owner).items():
        assert res["image_text"][key] == pytest.approx(value, abs=1e-4), key
    pairs = [json.loads(line) for line in open(triples)]
    ref = paired_recall(texts([p["text"] for p in pairs]) @ codes([p["code"] for p in pairs]).T, ("text", "code"))
    assert res["text_code"]["pairs"] == 8
    for key, value in ref.items():
        assert res["text_code"][key] == pytest.approx(value, abs=1e-4), key
    # the align/ folder itself is accepted too, and gives the same numbers
    assert cli_main(["eval", "retrieval", "--align", str(run / "align"), "--triples", triples, "--out", out]) == 0
    assert json.load(open(out))["text_code"] == res["text_code"]


def test_demo_table_reports_image_text_retrieval_of_the_alignment_run(run, tmp_path):
    from r1_ds.evaluation.demo_table import evaluation_table

    out = str(tmp_path / "demo.json")
    table = evaluation_table(tiny_export(), align_run=str(run), humaneval_problems=0, out=out)
    res = json.load(open(out))["image_text_retrieval"]
    assert "SYNTHETIC shapes" in table and "aligned encoders" in table and "not run" not in table
    images, texts, _ = reference_embeddings(run)
    paths, caps, owner = load_karpathy(KARPATHY)
    ref = image_text_recall(images(paths) @ texts(caps).T, owner)
    assert res["synthetic"] and res["image_to_text_R@1"] == pytest.approx(ref["image_to_text_R@1"], abs=1e-4)
    assert res["chance_R@1"] == pytest.approx(100 / 24)


def test_bad_alignment_folders_are_user_errors(run, tmp_path, caplog):
    assert cli_main(["eval", "retrieval", "--align", str(tmp_path), "--karpathy", "synthetic"]) == 2
    assert "holds no align/lm and align/heads" in caplog.text and "Fix:" in caplog.text
    assert cli_main(["eval", "retrieval", "--align", str(run), "--karpathy", "synthetic", "--clip", "ViT-B-32"]) == 2
    assert "--align alone" in caplog.text
    assert (
        cli_main(
            ["eval", "retrieval", "--align", str(run), "--karpathy", "synthetic", "--tokenizer", str(tmp_path / "none")]
        )
        == 2
    )
    assert "--tokenizer" in caplog.text
