"""benchmarks/train_throughput.py's table, from rows made here (the benchmark itself needs a GPU): each R1 row is
compared with each Llama row of its size and length, compiled or not, and a model that does not learn is flagged."""

import pytest

from benchmarks import train_throughput


def _row(model, compiled, tokens_per_s, seq_len=2048, loss=8.0, **extra):
    return dict(
        model=model,
        compiled=compiled,
        size="350m",
        seq_len=seq_len,
        micro_batch=8,
        params_m=360,
        tokens_per_s=tokens_per_s,
        mfu=0.2,
        peak_mem_gib=26.0,
        gpu_busy=0.7,
        first_loss=11.0,
        loss=loss,
        **extra,
    )


def test_models_named_compiled_run_compiled():
    args = train_throughput.parse_args(["--models", "r1", "r1-compiled", "llama-compiled"])
    assert args.models == ["r1", "r1-compiled", "llama-compiled"] and not args.compile_blocks


def test_a_compile_mode_without_a_compiled_model_is_refused(capsys):
    args = train_throughput.parse_args(["--models", "r1-compiled", "llama", "--compile-mode", "reduce-overhead"])
    assert args.compile_mode == "reduce-overhead"
    with pytest.raises(SystemExit) as e:
        train_throughput.parse_args(["--models", "r1", "llama", "--compile-mode", "reduce-overhead"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--compile-mode reduce-overhead" in err and "no model is compiled" in err and "-compiled" in err


def test_each_r1_row_is_compared_with_each_llama_row_of_its_length():
    rows = [
        _row("r1", False, 80_000, host_syncs=49),
        _row("r1", True, 100_000, host_syncs=2),
        _row("llama", False, 80_000),
        _row("llama", True, 125_000),
        _row("llama", False, 50_000, seq_len=8192),  # another length: no ratio against it
    ]
    lines = train_throughput.table(rows).splitlines()
    r1, r1c = (line for line in lines if " r1" in line)
    assert r1.endswith("1.00x llama, 0.64x llama-compiled")
    assert r1c.split()[2] == "r1-compiled" and r1c.endswith("1.25x llama, 0.80x llama-compiled")
    assert "(!)" not in "\n".join(lines)
    syncs = lines[0].split().index("syncs") - 3  # "params M", "peak GiB" and "GPU busy" are columns of two words
    assert (r1.split()[syncs], r1c.split()[syncs]) == ("49", "2")


def test_a_model_whose_loss_does_not_fall_is_flagged():
    rows = [_row("r1", True, 100_000, loss=10.95), _row("llama", False, 80_000)]
    text = train_throughput.table(rows)
    assert "11.00 -> 10.95 (!)" in text and "not training" in text


def test_accumulated_micro_batches_show_beside_the_micro_batch(capsys):
    assert train_throughput.parse_args([]).grad_accum == 1
    rows = [_row("r1", True, 100_000, grad_accum=4), _row("llama", False, 80_000)]
    r1, llama = train_throughput.table(rows).splitlines()[2:4]
    assert r1.split()[3] == "8x4" and llama.split()[3] == "8"
    with pytest.raises(SystemExit) as e:
        train_throughput.parse_args(["--grad-accum", "0"])
    assert e.value.code == 2 and "--grad-accum 0" in capsys.readouterr().err
