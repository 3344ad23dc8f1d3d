"""Packed-shard reader and its checks, data mixtures and the deterministic progressive sampler (pure, in one
process; one slow test trains on a mixture on one gloo rank)."""

import json

import numpy as np
import pytest

from r1_ds.data import DataError, PackedShards, ProgressiveSampler, Stage, batch_iterator, open_dataset
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
    four_ranks = np.concatenate(
        [np.concatenate(a.micro_batches(3, data_rank=r, data_size=4, micro_batch=2)) for r in range(4)]
    )
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


# ----------------------------------------------------------------------------- shard checks on open


def _rewrite_meta(path, **changes):
    meta = json.load(open(f"{path}/meta.json"))
    meta.update(changes)
    json.dump(meta, open(f"{path}/meta.json", "w"))


def test_a_shard_rewritten_with_another_dtype_at_the_same_size_is_refused(tmp_path):
    path = write_packed_shards(str(tmp_path), num_sequences=10, seq_len=16)
    file = f"{path}/shard_00001.bin"
    rows = np.fromfile(file, dtype=np.uint16)
    rows[: len(rows) // 2].astype(np.uint32).tofile(file)  # same bytes on disk, other dtype: garbage ids
    with pytest.raises(DataError, match=r"shard_00001\.bin: its bytes do not match the checksum.*another dtype.*Fix"):
        PackedShards(path)


def test_ids_beyond_the_vocabulary_and_broken_meta_are_refused_on_open(tmp_path):
    path = write_packed_shards(str(tmp_path), num_sequences=4, seq_len=8)
    _rewrite_meta(path, max_token_id=512)
    with pytest.raises(DataError, match="max_token_id=512 is not below vocab_size=512.*Fix"):
        PackedShards(path)
    _rewrite_meta(path, max_token_id=300, vocab_size=301)  # the meta says 301, the model has 300: refused at start
    with pytest.raises(DataError, match="largest id 300.*vocab_size=300"):
        open_dataset(path, seq_len=8, vocab_size=300)
    with open(f"{path}/meta.json", "w") as f:
        f.write('{"seq_len": 8, "dty')
    with pytest.raises(DataError, match=r"meta\.json: not readable JSON.*Fix: rerun `r1-ds prep"):
        PackedShards(path)
    json.dump({"seq_len": 8, "dtype": "uint16"}, open(f"{path}/meta.json", "w"))  # an older packer's meta
    with pytest.raises(DataError, match="lacks.*max_token_id.*checksum"):
        PackedShards(path)


def test_large_shards_are_checked_on_sampled_chunks_and_a_bounded_number_of_shards():
    from data_prep.shards import _checked_indices, sampled_sha256

    data = bytearray(np.random.default_rng(0).integers(0, 256, size=1 << 20, dtype=np.uint8).tobytes())
    reads = []

    def read(offset, n):
        reads.append((offset, n))
        return bytes(data[offset : offset + n])

    ref = sampled_sha256(read, len(data), chunks=4, chunk_bytes=1 << 16)
    assert reads[0][0] == 0 and reads[-1][0] + reads[-1][1] == len(data) and sum(n for _, n in reads) == 1 << 18
    data[0] ^= 1  # a changed byte inside a chunk changes the sum
    assert sampled_sha256(read, len(data), chunks=4, chunk_bytes=1 << 16) != ref
    picked = _checked_indices(1000)
    assert len(picked) == 64 and picked[0] == 0 and picked[-1] == 999
    assert _checked_indices(10) == list(range(10))


# ----------------------------------------------------------------------------- mixtures


@pytest.fixture
def two_folders(tmp_path):
    """Folder a: 40 rows of ids in [2, 100); folder b: 120 rows of ids in [100, 200); one tokenizer."""
    a = write_packed_shards(str(tmp_path / "a"), num_sequences=40, seq_len=16, token_ids=(2, 100))
    b = write_packed_shards(str(tmp_path / "b"), num_sequences=120, seq_len=16, token_ids=(100, 200))
    return a, b


def _tokens_per_folder(ds, steps, global_batch, seed=0):
    """Tokens drawn from folder a and from folder b over `steps` optimizer steps (told apart by their ids)."""
    sampler = ProgressiveSampler(len(ds), [Stage(0, steps, global_batch, 1.0)], seed=seed)
    counts = np.zeros(2, dtype=np.int64)
    for step in range(steps):
        micro = sampler.micro_batches(step, data_rank=0, data_size=1, micro_batch=global_batch // 2)
        for x, _ in batch_iterator(ds, micro, ds.seq_len):
            counts += [(x < 100).sum().item(), (x >= 100).sum().item()]
    return counts


def test_a_mixture_samples_its_folders_with_the_given_weights(two_folders):
    a, b = two_folders
    ds, seq_len = open_dataset([{"path": a, "weight": 3}, {"path": b, "weight": 1}], seq_len=None, vocab_size=512)
    assert len(ds) == 160 and seq_len == 16 and ds.tokenizer_dir.endswith("a/tokenizer")
    assert list(np.bincount(ds.source)) == [120, 40]  # shares 3:1 of the 160 rows, not the folders' 1:3 sizes
    epoch = _tokens_per_folder(ds, steps=10, global_batch=16)  # one epoch: every mixture row once
    assert list(epoch) == [120 * 16, 40 * 16]
    first = _tokens_per_folder(ds, steps=3, global_batch=16)  # any stretch holds the same shares
    assert abs(first[0] / first.sum() - 0.75) <= 0.05
    assert list(first) == list(_tokens_per_folder(ds, steps=3, global_batch=16))  # deterministic in the seed
    # folder a (40 rows, quota 120) repeats each row 3 times; folder b (120 rows, quota 40) gives every third row
    assert sorted(ds.row[ds.source == 0]) == sorted(np.repeat(np.arange(40), 3))
    assert list(ds.row[ds.source == 1]) == list(range(0, 120, 3))
    plain, _ = open_dataset([a, b], seq_len=None, vocab_size=512)  # folders without weights: by their rows
    assert list(_tokens_per_folder(plain, steps=10, global_batch=16)) == [40 * 16, 120 * 16]


def test_a_mixture_needs_one_tokenizer_and_well_formed_weights(two_folders, tmp_path):
    a, b = two_folders
    other = write_packed_shards(str(tmp_path / "c"), num_sequences=8, seq_len=16, vocab_size=640)
    with pytest.raises(DataError, match="not packed with one tokenizer.*vocab 512.*vocab 640.*--tokenizer DIR"):
        open_dataset([a, other], seq_len=None, vocab_size=640)
    from data_prep.shards import format_meta

    empty = tmp_path / "e" / "shards"  # a finished folder with no rows (prep kept nothing to pack)
    empty.mkdir(parents=True)
    tokenizer = f"{a}/../tokenizer/tokenizer.json"
    json.dump(
        format_meta([], seq_len=16, vocab_size=512, eos_token_id=1, tokenizer_file=tokenizer),
        open(empty / "meta.json", "w"),
    )
    for bad, rule in (
        ([], "names no data"),
        ([a, str(empty)], "holds no rows"),
        ([{"path": a, "weight": 0}], "must be a number > 0"),
        ([a, {"path": b, "weight": 1}], "every item must be a folder"),
        ([{"path": a, "share": 1}], "exactly the keys path and weight"),
        (5, "must be a packed"),
    ):
        with pytest.raises(DataError, match=rule):
            open_dataset(bad, seq_len=None, vocab_size=512)


def test_the_training_config_takes_a_mixture_and_the_trainer_opens_it(two_folders):
    from r1_ds.config import load_train_config

    a, b = two_folders
    mixture = [{"path": a, "weight": 1}, {"path": b, "weight": 1}]
    cfg = load_train_config(None, {"data.path": mixture})
    assert cfg.data.path == mixture
    ds, _ = open_dataset(cfg.data.path, seq_len=cfg.data.seq_len, vocab_size=512)
    assert list(np.bincount(ds.source)) == [80, 80]


def _train_steps(overrides: dict) -> int:
    from r1_ds.config import load_train_config
    from r1_ds.train import train

    return train(load_train_config(None, overrides)).global_steps


@pytest.mark.slow
def test_a_mixture_trains(two_folders, tmp_path):
    from r1_ds.local_ranks import run_distributed
    from r1_ds.metrics import read_metrics
    from tests.train_runs import BASE

    a, b = two_folders
    out = str(tmp_path / "run")
    overrides = {
        **BASE,
        "output_dir": out,
        "data.path": [{"path": a, "weight": 3}, {"path": b, "weight": 1}],
        "data.seq_len": 16,
        "schedule.global_batch": 4,
        "schedule.steps": 2,
        "checkpoint.every": 0,
    }
    assert run_distributed(_train_steps, 1, overrides, timeout=240) == [2]
    losses = [m["loss"] for m in read_metrics(f"{out}/metrics.jsonl")]
    assert len(losses) == 2 and all(np.isfinite(losses))
