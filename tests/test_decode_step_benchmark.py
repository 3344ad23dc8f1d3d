"""benchmarks/decode_step.py end to end at tiny size on CPU: the command the GPU run takes, with every row written."""

import json

from benchmarks import decode_step


def test_decode_step_benchmark_writes_a_row_per_model_context_and_batch(tmp_path, capsys):
    out = tmp_path / "decode.json"
    args = ["--preset", "tiny", "--context", "20", "40", "--batch", "1", "3", "--steps", "1", "--padded"]
    assert decode_step.main([*args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["model"], r["context"], r["batch"]) for r in result["rows"]}
    assert rows == {(m, c, b) for m in ("r1", "llama") for c in (20, 40) for b in (1, 3)}
    assert all(r["ms_per_step"] > 0 for r in result["rows"])
    assert result["padded"] and result["command"] == " ".join(
        ["python", "benchmarks/decode_step.py", *args, "--json", str(out)]
    )
    assert "vs llama" in capsys.readouterr().out
