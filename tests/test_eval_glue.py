"""GLUE: metrics against scikit-learn / scipy, the benchmark average, both input layouts, and a
fine-tune that learns a synthetic task."""

import json
import os

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from r1_ds.evaluation import glue_metrics as gm
from r1_ds.evaluation.glue_data import TASKS, find_tasks, load_task
from r1_ds.evaluation.synthetic import DATA_DIR, write_synthetic_glue


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 2, 50)
    pred = np.where(rng.random(50) < 0.7, gold, 1 - gold)
    assert gm.accuracy(pred, gold) == pytest.approx(skm.accuracy_score(gold, pred), abs=1e-12)
    assert gm.f1_binary(pred, gold) == pytest.approx(skm.f1_score(gold, pred), abs=1e-12)
    assert gm.matthews_corrcoef(pred, gold) == pytest.approx(skm.matthews_corrcoef(gold, pred), abs=1e-12)


def test_degenerate_predictions_match_sklearn():
    gold = np.array([0, 1, 1, 0, 1])
    for pred in (np.zeros(5, int), np.ones(5, int), gold):
        assert gm.matthews_corrcoef(pred, gold) == pytest.approx(skm.matthews_corrcoef(gold, pred), abs=1e-12)
        assert gm.f1_binary(pred, gold) == pytest.approx(skm.f1_score(gold, pred, zero_division=0), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 6, 40) * 1.0  # many ties, as STS-B's rounded scores
    pred = gold + rng.normal(0, 2, 40)
    pred[:10] = np.round(pred[:10])
    assert gm.pearson(pred, gold) == pytest.approx(stats.pearsonr(pred, gold)[0], abs=1e-12)
    assert gm.spearman(pred, gold) == pytest.approx(stats.spearmanr(pred, gold)[0], abs=1e-12)
    np.testing.assert_allclose(gm.average_ranks(gold), stats.rankdata(gold))


def test_glue_average_is_the_mean_of_task_scores():
    metrics = {
        "cola": {"mcc": 40.0},
        "mrpc": {"f1": 80.0, "accuracy": 70.0},
        "mnli": {"accuracy_m": 60.0, "accuracy_mm": 62.0},
        "wnli": {"accuracy": 50.0},
    }
    scores = {t: gm.task_score(m) for t, m in metrics.items()}
    assert scores == {"cola": 40.0, "mrpc": 75.0, "mnli": 61.0, "wnli": 50.0}
    avg = gm.glue_average(scores)
    assert avg["glue_average"] == pytest.approx((40 + 75 + 61 + 50) / 4)
    assert avg["glue_average_no_wnli"] == pytest.approx((40 + 75 + 61) / 3)
    assert avg["glue_average_tasks"] == ["cola", "mrpc", "mnli", "wnli"] and not avg["glue_average_complete"]
    assert gm.glue_average({t: 1.0 for t in TASKS})["glue_average_complete"]


def test_shipped_synthetic_glue_is_what_the_generator_writes(tmp_path):
    write_synthetic_glue(str(tmp_path))
    for spec in TASKS.values():
        for stem in ("train", *spec.dev):
            rel = os.path.join(spec.folder, f"{stem}.tsv")
            assert open(tmp_path / rel).read() == open(os.path.join(DATA_DIR, "glue", rel)).read(), rel
    assert find_tasks(str(tmp_path)) == list(TASKS)


def test_datasets_folders_read_like_the_tsv_layout(tmp_path):
    from datasets import Dataset, DatasetDict

    tsv = os.path.join(DATA_DIR, "glue")
    for name in ("cola", "mnli", "stsb"):
        spec = TASKS[name]
        train, devs = load_task(tsv, name)
        dev_splits = ["validation"] if len(spec.dev) == 1 else ["validation_matched", "validation_mismatched"]

        def table(examples):
            cols = {c: [t[i] for t, _ in examples] for i, c in enumerate(spec.hf_text)}
            return Dataset.from_dict({**cols, "label": [y if spec.num_labels == 1 else int(y) for _, y in examples]})

        DatasetDict({"train": table(train), **{s: table(devs[d]) for s, d in zip(dev_splits, spec.dev)}}).save_to_disk(
            str(tmp_path / name)
        )
        assert load_task(str(tmp_path), name) == (train, devs)
        # the Hub's parquet layout of the same splits
        parquet = tmp_path / "parquet" / name
        parquet.mkdir(parents=True)
        table(train).to_parquet(str(parquet / "train-00000-of-00001.parquet"))
        for s, d in zip(dev_splits, spec.dev):
            table(devs[d]).to_parquet(str(parquet / f"{s}-00000-of-00001.parquet"))
        assert load_task(str(tmp_path / "parquet"), name) == (train, devs)
    assert find_tasks(str(tmp_path)) == ["cola", "stsb", "mnli"]


def test_bad_glue_folder_is_a_user_error(tmp_path, caplog):
    from r1_ds.cli import main as cli_main
    from tests.test_eval_cli import tiny_export

    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("text\tlabel\nhello\t1\n")
    (tmp_path / "SST-2" / "dev.tsv").write_text("text\tlabel\nhello\t1\n")
    assert cli_main(["eval", "glue", "--model", tiny_export(), "--glue-dir", str(tmp_path)]) == 2
    assert "header lacks ['sentence']" in caplog.text and "Fix:" in caplog.text


def test_eval_glue_fine_tunes_and_learns_synthetic_sst2(tmp_path, capsys):
    from r1_ds.cli import main as cli_main
    from tests.test_eval_cli import tiny_export

    out = str(tmp_path / "glue.json")
    assert (
        cli_main(
            [
                "eval",
                "glue",
                "--model",
                tiny_export(),
                "--glue-dir",
                "synthetic",
                "--tasks",
                "sst2,stsb,mnli",
                "--epochs",
                "5",
                "--lr",
                "1e-3",
                "--out",
                out,
            ]
        )
        == 0
    )
    res = json.load(open(out))
    assert res["synthetic"] and "SYNTHETIC" in capsys.readouterr().out
    assert set(res["tasks"]) == {"sst2", "stsb", "mnli"}
    assert {"pearson", "spearman"} <= set(res["tasks"]["stsb"]) and {"accuracy_m", "accuracy_mm"} <= set(
        res["tasks"]["mnli"]
    )
    assert res["tasks"]["sst2"]["accuracy"] > 75  # chance is 50: the head and the decoder learn
    assert res["glue_average"] == pytest.approx(np.mean([r["score"] for r in res["tasks"].values()]))
