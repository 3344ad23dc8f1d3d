"""Retrieval recall@k on hand-made similarity matrices, the Karpathy reader on the shipped synthetic
set, and `r1-ds eval retrieval` on text-code triples with a tiny exported model."""

import json
import os

import pytest
import torch

from r1_ds.evaluation.retrieval import (
    image_text_recall,
    image_text_retrieval,
    load_karpathy,
    paired_recall,
    recall_at_k,
)
from r1_ds.evaluation.synthetic import DATA_DIR, write_synthetic_karpathy


def register_tiny_clip(folder) -> str:
    """Register a tiny open_clip architecture (ViT, 32 px images, 32-d embeddings) and return its name."""
    import open_clip

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / "r1-eval-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(folder / "r1-eval-tiny-clip.json"))
    return "r1-eval-tiny-clip"


def test_image_text_recall_on_a_hand_made_matrix():
    # 3 images x 6 captions; captions 2i and 2i+1 belong to image i
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.8, 0.0, 0.2, 0.3],  # image 0: its caption 0 ranks first
            [0.5, 0.6, 0.1, 0.2, 0.7, 0.4],  # image 1: its best (0.2) is beaten by 4 others
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.0],
        ]
    )  # image 2: caption 4 (0.5) is top
    r = image_text_recall(sim, [0, 0, 1, 1, 2, 2], ks=(1, 2, 5))
    assert r["image_to_text_R@1"] == pytest.approx(100 * 2 / 3)  # images 0 and 2
    assert r["image_to_text_R@2"] == pytest.approx(100 * 2 / 3)
    assert r["image_to_text_R@5"] == pytest.approx(100.0)  # image 1's best is 5th of 6
    # text->image: caption c's image rank among the 3 images (column c)
    # c0: img0 0.9 top; c1: img0 0.1 < 0.6, 0.2 -> 3rd; c2: img1 0.1 < 0.8, 0.3 -> 3rd; c3: img1 0.2 < 0.4 -> 2nd;
    # c4: img2 0.5 < 0.7 -> 2nd; c5: img2 0.0 < 0.3, 0.4 -> 3rd
    assert r["text_to_image_R@1"] == pytest.approx(100 / 6)
    assert r["text_to_image_R@2"] == pytest.approx(100 * 3 / 6)
    assert r["text_to_image_R@5"] == pytest.approx(100.0)


def test_ties_count_against_the_match_and_bad_inputs_are_refused():
    assert recall_at_k(torch.zeros(4, 4), 1, torch.eye(4, dtype=torch.bool)) == 0.0
    assert recall_at_k(torch.zeros(4, 4), 4, torch.eye(4, dtype=torch.bool)) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(2, 3), 1, torch.zeros(2, 3, dtype=torch.bool))  # a query without a positive
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(2, 2), 1, torch.eye(3, dtype=torch.bool))


@pytest.mark.parametrize("seed", range(3))
def test_paired_recall_matches_a_top_k_reference(seed):
    g = torch.Generator().manual_seed(seed)
    sim = torch.randn(30, 30, generator=g) + 1.5 * torch.eye(30)
    r = paired_recall(sim, ("text", "code"))
    for k in (1, 5, 10):
        top = sim.topk(k, dim=1).indices  # clip_benchmark's reading: is the match in the top k?
        ref = (top == torch.arange(30).unsqueeze(1)).any(1).float().mean().item()
        assert r[f"text_to_code_R@{k}"] == pytest.approx(100 * ref)
        top_t = sim.T.topk(k, dim=1).indices
        assert r[f"code_to_text_R@{k}"] == pytest.approx(
            100 * (top_t == torch.arange(30).unsqueeze(1)).any(1).float().mean().item()
        )


def test_synthetic_karpathy_set_reads_back_and_scores_an_oracle(tmp_path):
    shipped = os.path.join(DATA_DIR, "karpathy", "dataset_flickr30k.json")
    assert json.load(open(write_synthetic_karpathy(str(tmp_path)))) == json.load(open(shipped))
    paths, caps, owner = load_karpathy(shipped)
    assert len(paths) == 24 and len(caps) == 120 and owner[:6] == [0, 0, 0, 0, 0, 1]
    index = {p: i for i, p in enumerate(paths)}
    cap_owner = dict(zip(caps, owner))  # templated captions are unique per image here
    assert len(cap_owner) == len(caps)

    def images(ps):
        return torch.nn.functional.one_hot(torch.tensor([index[p] for p in ps]), 24).float()

    def texts(cs):
        return torch.nn.functional.one_hot(torch.tensor([cap_owner[c] for c in cs]), 24).float()

    r = image_text_retrieval(images, texts, paths, caps, owner)
    assert r["image_to_text_R@1"] == 100.0 and r["text_to_image_R@1"] == 100.0
    shuffled = image_text_retrieval(images, lambda cs: texts(cs).roll(1, dims=1), paths, caps, owner)
    assert shuffled["text_to_image_R@1"] == 0.0


def test_missing_split_and_images_are_user_errors(tmp_path, caplog):
    from r1_ds.cli import main as cli_main
    from r1_ds.evaluation.model_io import EvalInputError

    shipped = os.path.join(DATA_DIR, "karpathy", "dataset_flickr30k.json")
    with pytest.raises(EvalInputError, match="split='val'"):
        load_karpathy(shipped, split="val")
    with pytest.raises(EvalInputError, match="pass --images"):
        load_karpathy(shipped, images_dir=str(tmp_path))
    assert (
        cli_main(
            [
                "eval",
                "retrieval",
                "--karpathy",
                "synthetic",
                "--clip",
                "ViT-S-32",
                "--clip-weights",
                str(tmp_path / "none.bin"),
            ]
        )
        == 2
    )
    assert "--clip-weights" in caplog.text and "Fix:" in caplog.text


def test_eval_retrieval_text_code_on_triples(tmp_path, capsys):
    from r1_ds.cli import main as cli_main
    from tests.test_eval_cli import tiny_export

    triples = tmp_path / "triples.jsonl"
    with open(triples, "w") as f:
        for i in range(6):
            f.write(
                json.dumps(
                    {
                        "id": str(i),
                        "kind": "text-code",
                        "text": f"Return {i} plus the argument.",
                        "code": f"def add_{i}(x):\n    return x + {i}\n",
                    }
                )
                + "\n"
            )
        f.write(json.dumps({"id": "img", "kind": "image-text", "text": "a red circle", "code": None}) + "\n")
    out = str(tmp_path / "r.json")
    assert cli_main(["eval", "retrieval", "--model", tiny_export(), "--triples", str(triples), "--out", out]) == 0
    res = json.load(open(out))["text_code"]
    assert res["pairs"] == 6 and res["text_to_code_R@10"] == 100.0 and 0 <= res["text_to_code_R@1"] <= 100
    assert "retrieval/text_code" in capsys.readouterr().out


def test_eval_retrieval_image_text_with_a_local_open_clip_checkpoint(tmp_path):
    """A tiny random open_clip model saved to a file: the CLI's R@k are those of its own embeddings."""
    import open_clip
    from PIL import Image

    from r1_ds.cli import main as cli_main

    register_tiny_clip(tmp_path)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("r1-eval-tiny-clip", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    out = str(tmp_path / "r.json")
    assert (
        cli_main(
            [
                "eval",
                "retrieval",
                "--karpathy",
                "synthetic",
                "--clip",
                "r1-eval-tiny-clip",
                "--clip-weights",
                str(tmp_path / "clip.pt"),
                "--out",
                out,
            ]
        )
        == 0
    )
    res = json.load(open(out))
    assert res["synthetic"] and res["image_text"]["images"] == 24 and res["image_text"]["captions"] == 120
    paths, caps, owner = load_karpathy(os.path.join(DATA_DIR, "karpathy", "dataset_flickr30k.json"))
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths]))
        txt = model.encode_text(open_clip.get_tokenizer("r1-eval-tiny-clip")(caps))
    sim = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    for key, value in image_text_recall(sim, owner).items():
        assert res["image_text"][key] == pytest.approx(value, abs=1e-4), key
