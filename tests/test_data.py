"""Packed-shard reader and the deterministic progressive sampler (pure, no processes)."""

import json

import numpy as np
import pytest

from r1_ds.data import DataError, PackedShards, ProgressiveSampler, Stage, open_dataset
from tests.train_runs import write_packed_shards


def test_packed_shards_read_what_was_written(tmp_path):
    path = write_packed_shards(str(tmp_path), num_sequences=10, seq_len=16)
    ds = PackedShards(path)
    assert len(ds) == 10 and ds.seq_len == 16 and ds.vocab_size == 512
    assert ds.tokenizer_dir == str(tmp_path / "tokenizer")
    raw = np.concatenate([np.fromfile(f"{path}/shard_0000{i}.bin", dtype=np.uint16).reshape(-1, 16) for i in (0, 1)])
    got = ds.batch(np.array([9, 0, 5, 4]), 12)
    assert got.dtype.is_floating_point is False and got.shape == (4, 12)
    assert (got.numpy() == raw[[9, 0, 5, 4], :12]).all()


def test_bad_data_folders_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="no meta.json.*Fix"):
        PackedShards(tmp_path)
    path = write_packed_shards(str(tmp_path), num_sequences=4, seq_len=8)
    with pytest.raises(DataError, match="longer than the packed sequences.*Fix"):
        open_dataset(path, seq_len=9, vocab_size=512)
    with pytest.raises(DataError, match="vocab_size >= 512"):
        open_dataset(path, seq_len=8, vocab_size=256)
    meta = json.load(open(f"{path}/meta.json"))
    meta["shards"][0]["num_sequences"] += 1
    json.dump(meta, open(f"{path}/meta.json", "w"))
    with pytest.raises(DataError, match="incomplete"):
        PackedShards(path)


def test_sampler_is_disjoint_over_data_ranks_and_covers_the_global_batch():
    s = ProgressiveSampler(100, [Stage(0, 10, 8, 1.0)], seed=3)
    for step in (0, 5, 11, 12, 13):  # 12 steps per epoch: crosses into epoch 1
        per_rank = [s.micro_batches(step, data_rank=r, data_size=2, micro_batch=2) for r in range(2)]
        assert all(len(m) == 2 for m in per_rank)  # grad_accum = 8 / (2 * 2)
        flat = np.concatenate([np.concatenate(m) for m in per_rank])
        assert sorted(flat) == sorted(s.global_indices(step)) and len(set(flat)) == 8
    epoch0 = np.concatenate([s.global_indices(t) for t in range(12)])
    assert len(set(epoch0)) == 96  # an epoch never repeats a sequence (4 dropped as the remainder)
    assert not np.array_equal(s.global_indices(0), s.global_indices(12))  # a new epoch reshuffles


def test_sampler_is_a_pure_function_of_step_and_layout_independent():
    a = ProgressiveSampler(64, [Stage(0, 4, 8, 1.0)], seed=1)
    b = ProgressiveSampler(64, [Stage(0, 4, 8, 1.0)], seed=1)
    assert np.array_equal(a.global_indices(3), b.global_indices(3))
    one_rank = np.concatenate(a.micro_batches(3, data_rank=0, data_size=1, micro_batch=4))
    four_ranks = np.concatenate([np.concatenate(a.micro_batches(3, data_rank=r, data_size=4, micro_batch=2))
                                 for r in range(4)])
    assert sorted(one_rank) == sorted(four_ranks)  # same samples per step whatever the layout


def test_progressive_stages_use_their_data_fraction_and_batch():
    s = ProgressiveSampler(400, [Stage(0, 3, 32, 0.25), Stage(3, 3, 64, 0.5), Stage(6, 10, 128, 1.0)], seed=0)
    assert [len(s.global_indices(t)) for t in (0, 2, 3, 5, 6, 15)] == [32, 32, 64, 64, 128, 128]
    assert max(np.concatenate([s.global_indices(t) for t in range(3)])) < 100
    assert max(np.concatenate([s.global_indices(t) for t in range(3, 6)])) < 200
    with pytest.raises(DataError, match="fewer than its global batch"):
        ProgressiveSampler(100, [Stage(0, 3, 32, 0.25)], seed=0)


def test_resume_refuses_other_data():
    s = ProgressiveSampler(64, [Stage(0, 4, 8, 1.0)], seed=1)
    state = s.state_dict(2)
    s.check_resume(state, 2)
    with pytest.raises(DataError, match="num_samples"):
        ProgressiveSampler(65, [Stage(0, 4, 8, 1.0)], seed=1).check_resume(state, 2)


def test_plot_writes_a_png_and_smooths(tmp_path):
    from r1_ds.cli import main as cli_main
    from r1_ds.plot import smooth

    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(1, 9):
            f.write(json.dumps({"step": step, "loss": 6.0 / step, "stage": 1 + (step > 4)}) + "\n")
    assert cli_main(["plot", str(tmp_path), "--smooth", "2"]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]
    assert cli_main(["plot", str(tmp_path / "nothing")]) == 2


def test_resume_may_lengthen_the_current_stage_but_not_change_finished_ones():
    state = ProgressiveSampler(400, [Stage(0, 3, 32, 0.25), Stage(3, 3, 64, 1.0)], seed=0).state_dict(4)
    ProgressiveSampler(400, [Stage(0, 3, 32, 0.25), Stage(3, 10, 64, 1.0)], seed=0).check_resume(state, 4)
    with pytest.raises(DataError, match="stages trained so far differ"):
        ProgressiveSampler(400, [Stage(0, 2, 32, 0.25), Stage(2, 4, 64, 1.0)], seed=0).check_resume(state, 4)
    with pytest.raises(DataError, match="stages trained so far differ"):
        ProgressiveSampler(400, [Stage(0, 3, 32, 0.25), Stage(3, 3, 128, 1.0)], seed=0).check_resume(state, 4)
