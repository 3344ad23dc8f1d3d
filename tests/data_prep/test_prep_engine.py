"""The datatrove engine: 2 workers = 1 worker = the default run (same documents, same stats), resume of a killed
multi-worker run, fsspec inputs, the Slurm / Ray executors' parameters, and --config."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.cli import main
from data_prep.engine.executors import build_executor
from data_prep.engine.run import plan_tasks
from data_prep.prep import PrepConfig, run
from data_prep.sample_corpus import build_sample_corpus
from data_prep.scale_config import ScaleSettings

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(quality_model="none", vocab_size=300, seq_len=64, shard_rows=32, part_size=25)
FLAGS = ["--quality-model", "none", "--vocab-size", "300", "--seq-len", "64", "--shard-rows", "32", "--part-size", "25"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return build_sample_corpus(root / "in", text_docs=60, code_files=12, images=1, seed=0)


@pytest.fixture(scope="module")
def corpus(sample) -> Path:
    return sample.text[0]


@pytest.fixture(scope="module")
def runs(corpus, sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, kw in {
        "single": dict(tasks=1),
        "one": dict(executor="local", workers=1, tasks=4),
        "two": dict(executor="local", workers=2, tasks=4),
    }.items():
        code = [str(p) for p in sample.code] if name != "one" else []  # code: one task vs 2 workers
        out[name] = (root / name, run(PrepConfig(out=str(root / name), text=[str(corpus)], code=code, **SMALL, **kw)))
    return out


def _records(out: Path, kind: str, modality: str = "text") -> list[dict]:
    return [json.loads(line) for p in sorted((out / kind / modality).glob("part_*.jsonl")) for line in p.open()]


def test_two_workers_keep_the_single_process_documents_and_stats(runs):
    (single, s0), (one, s1), (two, s2) = runs["single"], runs["one"], runs["two"]
    assert s0["modalities"]["text"]["kept"] > 0 and s0["modalities"]["text"]["dropped"] > 0
    assert s0["modalities"]["text"] == s1["modalities"]["text"] == s2["modalities"]["text"]
    assert _records(single, "kept") == _records(one, "kept") == _records(two, "kept")  # same order too
    rejects = [sorted((r["id"], r["stage"], r["reason"]) for r in _records(o, "rejects")) for o in (single, one, two)]
    assert rejects[0] == rejects[1] == rejects[2]
    assert ("exact_dedup", "duplicate") in {(r[1], r[2]) for r in rejects[0]}  # dedup ran across tasks
    assert len(list((two / "kept" / "text").glob("part_*.jsonl"))) == 4
    assert (single / "shards" / "shard_00000.bin").read_bytes() == (two / "shards" / "shard_00000.bin").read_bytes()


def test_code_on_two_workers_matches_the_single_process_runner(runs):
    (single, s0), (two, s2) = runs["single"], runs["two"]
    assert s0["modalities"]["code"]["kept"] > 0 and s0["modalities"]["code"]["dropped"] > 0
    assert s0["modalities"]["code"] == s2["modalities"]["code"]
    assert _records(single, "kept", "code") == _records(two, "kept", "code")
    key = [sorted((r["id"], r["stage"], r["reason"]) for r in _records(o, "rejects", "code")) for o in (single, two)]
    assert key[0] == key[1] and ("syntax", "syntax_error") in {(k[1], k[2]) for k in key[0]}


def test_killed_multi_worker_run_resumes_to_the_same_output(runs, corpus, tmp_path):
    ref = runs["one"][0]  # same inputs (text only) and tasks; the output does not depend on the worker count
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "data_prep",
        "--out",
        str(out),
        "--text",
        str(corpus),
        *FLAGS,
        "--executor",
        "local",
        "--workers",
        "2",
        "--tasks",
        "4",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "DATA_PREP_CRASH_AT": "task:2"}
    crashed = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=300, start_new_session=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    done = list((out / "engine" / "text" / "logs" / "filter" / "completions").glob("*"))
    assert 1 <= len(done) < 4 and not (out / "stats.json").exists()
    env.pop("DATA_PREP_CRASH_AT")
    resumed = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=300, start_new_session=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert b"Skipping" in resumed.stderr  # completed tasks were not redone
    for rel in ["stats.json", "tokenizer/tokenizer.json", "shards/meta.json", "shards/shard_00000.bin"] + [
        f"{kind}/text/part_{t:05d}.jsonl" for kind in ("kept", "rejects") for t in range(4)
    ]:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    assert not list(out.rglob(".tmp-*"))


def test_plan_tasks_contiguous_and_balanced():
    sizes = [10, 10, 10, 10, 100, 10, 10, 10, 10, 10]
    ranges = plan_tasks(sizes, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes) and len(ranges) == 3
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
    assert plan_tasks([5, 5], 8) == [(0, 1), (1, 2)]  # never more tasks than files


@pytest.mark.parametrize("executor", ["slurm", "ray"])
def test_cluster_executors_built_with_the_settings(executor, tmp_path):
    cfg = ScaleSettings(
        executor=executor, workers=16, cpus_per_task=4, mem_per_cpu_gb=3, slurm_partition="cpu", slurm_time="02:00:00"
    )
    first = build_executor(cfg, [], stage="signatures", tasks=64, logging_dir=tmp_path / "a")
    second = build_executor(cfg, [], stage="dedup", tasks=1, logging_dir=tmp_path / "b", depends=first)
    assert (first.tasks, first.workers, first.cpus_per_task, second.depends, second.workers) == (64, 16, 4, first, 1)
    assert first.logging_dir.path.endswith("a") and first.skip_completed
    if executor == "slurm":
        assert (first.partition, first.time, first.mem_per_cpu_gb, first.job_name) == (
            "cpu",
            "02:00:00",
            3,
            "r1-prep-signatures",
        )
        assert first.venv_path.endswith("bin/activate")
    else:
        assert first.mem_per_cpu_gb == 3


def test_config_file_through_the_training_loader(tmp_path, corpus, caplog):
    cfg_file = tmp_path / "prep.yaml"
    cfg_file.write_text(f"text: [{corpus}]\nexecutor: local\nworkers: 2\nlanguages: [en]\nvocab_size: 999\n")
    from data_prep import cli

    parser = __import__("argparse").ArgumentParser()
    cli.add_prep_arguments(parser)
    cfg = cli._config_from_args(parser.parse_args(["--config", str(cfg_file), "--vocab-size", "300"]))
    assert (cfg.text, cfg.executor, cfg.workers, cfg.languages) == ([str(corpus)], "local", 2, ["en"])
    assert cfg.vocab_size == 300  # a flag that differs from its default wins over the file
    cfg_file.write_text("executr: local\n")
    assert main(["--config", str(cfg_file), "--out", str(tmp_path / "o")]) == 2
    assert "unknown key(s) ['executr']" in caplog.text and "executor" in caplog.text


def test_engine_errors_name_the_flag(tmp_path, caplog):
    assert main(["--out", str(tmp_path / "o"), "--near-dedup", "--text", str(tmp_path)]) == 2
    assert "--near-dedup" not in caplog.text and "is empty" in caplog.text  # near-dedup runs on every run
    assert main(["--out", str(tmp_path / "o"), "--executor", "local", "--text", str(tmp_path / "*.zst")]) == 2
    assert "matches no file" in caplog.text
    assert main(["--out", str(tmp_path / "o"), "--langid-model", str(tmp_path / "nope.npz")]) == 2
    assert "--langid-model" in caplog.text and "not a file" in caplog.text
    assert main(["--out", str(tmp_path / "o"), "--languages", "English"]) == 2
    assert "ISO 639-1" in caplog.text


def test_progress_lines_give_rate_and_eta(monkeypatch):
    from data_prep import progress as progress_mod

    now = [100.0]
    monkeypatch.setattr(progress_mod.time, "perf_counter", lambda: now[0])
    lines: list[str] = []
    p = progress_mod.Progress("task 3", total_bytes=4_000_000, emit=lines.append, every_s=10)
    now[0] = 105.0
    p.update(500, 1_000_000)  # before every_s: nothing logged
    now[0] = 120.0
    p.update(2000, 1_000_000)
    assert lines == ["task 3: 2000 docs, 100 docs/s, 25.0% of 4.0 MB read, ETA 1m00s"]
    assert progress_mod.format_eta(float("nan")) == "?" and progress_mod.format_eta(3725) == "1h02m05s"
    assert progress_mod.Progress("text", None, lines.append).line(now[0] + 10) == "text: 0 docs, 0 docs/s"


def test_remote_url_inputs_through_fsspec(tmp_path):
    """A URL input (fsspec's in-memory file system stands for s3:// or hf:// here; one worker runs in this process,
    where the memory file system lives)."""
    import gzip

    import fsspec

    from data_prep.engine.run import run_engine
    from data_prep.filters.length import LengthFilter
    from data_prep.filters.read_error import ReadErrorFilter

    fs = fsspec.filesystem("memory")
    fs.pipe("/corpus/shard_0.jsonl.gz", gzip.compress(b'{"text": "hello"}\n{"text": ""}\n'))
    fs.pipe("/corpus/shard_1.jsonl", b'{"text": "world"}\nnot json\n')
    cfg = ScaleSettings(executor="local", workers=1, tasks=2)
    totals = run_engine(
        specs=["memory://corpus/"],
        filters=[ReadErrorFilter(), LengthFilter()],
        out=tmp_path,
        cfg=cfg,
        text_field="text",
        id_field=None,
    )
    assert totals["read"] == {"in": 4, "kept": 3, "dropped": 1, "reasons": {"bad_json": 1}}
    assert totals["length"]["reasons"] == {"empty": 1}
    kept = [json.loads(line) for p in sorted((tmp_path / "kept" / "text").glob("*.jsonl")) for line in p.open()]
    assert [(r["id"], r["text"], r["source"]) for r in kept] == [
        ("corpus/shard_0.jsonl.gz:1", "hello", "memory:///corpus/shard_0.jsonl.gz:1"),
        ("corpus/shard_1.jsonl:1", "world", "memory:///corpus/shard_1.jsonl:1"),
    ]


def test_slurm_run_submits_then_asks_for_a_rerun(corpus, tmp_path, monkeypatch, caplog):
    """Slurm returns after submitting (sbatch replaced here): no stats yet, exit code 0, and the message says to
    rerun; the stages are chained so that only the last one is launched."""
    from datatrove.executor.slurm import SlurmPipelineExecutor

    launched = []
    monkeypatch.setattr(SlurmPipelineExecutor, "run", lambda self: launched.append(self))
    caplog.set_level("INFO")
    out = tmp_path / "o"
    args = ["--out", str(out), "--text", str(corpus), *FLAGS, "--executor", "slurm", "--slurm-partition", "cpu"]
    assert main(args) == 0
    assert "submitted to Slurm" in caplog.text and "rerun this command" in caplog.text
    (last,) = launched
    assert last.depends.depends is not None and last.depends.depends.depends is None  # filter <- dedup <- signatures
    assert not (out / "stats.json").exists()


def _task_streams(out: Path) -> list[list[int]]:
    """Each pack task's token stream (its shards in order), its last row's padding cut off by the documents count."""
    from data_prep.packing import SHARDS_PER_TASK
    from data_prep.shards import PackedShards

    ps = PackedShards(out / "shards")
    rows: dict[int, list] = {}
    for s in ps.meta["shards"]:
        task = int(s["file"][len("shard_") : -len(".bin")]) // SHARDS_PER_TASK
        arr = np.fromfile(out / "shards" / s["file"], dtype=ps.dtype).reshape(-1, ps.seq_len)
        rows.setdefault(task, []).extend(arr.tolist())
    return [sum(r, []) for _, r in sorted(rows.items())]


def _documents(stream: list[int], eos: int) -> list[tuple[int, ...]]:
    """The documents of a token stream; the padding of the last row splits into empty ones, which are dropped (a
    kept document is never empty)."""
    docs, cur = [], []
    for t in stream:
        if t == eos:
            docs.append(tuple(cur))
            cur = []
        else:
            cur.append(t)
    return [d for d in docs if d]


def test_packing_split_over_two_tasks_holds_the_same_documents_and_tokens(runs, corpus, sample, tmp_path):
    """--pack-tasks 2 on 2 workers, with the one-pack-task run's tokenizer: each task packs its own shards; together
    they hold the same documents (as token sequences, in the same order) and tokens; only the padding rows differ."""
    one = runs["two"][0]  # text and code, 4 tasks on 2 workers, one pack task
    out = tmp_path / "packed2"
    stats = run(
        PrepConfig(
            out=str(out),
            text=[str(corpus)],
            code=[str(p) for p in sample.code],
            **SMALL,
            executor="local",
            workers=2,
            tasks=4,
            pack_tasks=2,
            tokenizer=str(one / "tokenizer"),
        )
    )
    metas = [json.loads((o / "shards" / "meta.json").read_text()) for o in (one, out)]
    kept = stats["modalities"]["text"]["kept"] + stats["modalities"]["code"]["kept"]
    assert metas[0]["num_documents"] == metas[1]["num_documents"] == kept
    assert metas[0]["num_tokens"] == metas[1]["num_tokens"]
    streams = [_task_streams(o) for o in (one, out)]
    assert len(streams[0]) == 1 and len(streams[1]) == 2  # two tasks, each with its own shards
    eos = metas[0]["eos_token_id"]
    per_task = [_documents(s, eos) for s in streams[1]]
    ref = _documents(streams[0][0], eos)
    assert all(per_task) and [d for docs in per_task for d in docs] == ref
    assert len(ref) == metas[0]["num_documents"]
    assert {s["file"] for s in metas[1]["shards"]} >= {"shard_00000.bin", "shard_100000.bin"}
