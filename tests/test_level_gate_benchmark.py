"""benchmarks/level_gate.py: each form of the gate computes the model's fuse (forward and gradients), and the
command writes a row per form and mode."""

import json

import torch

from benchmarks import level_gate
from r1_ds.model.modeling_r1 import gated_sum


def test_every_gate_form_matches_the_models_gate_and_gated_sum():
    h, weight, bias = level_gate.inputs(tokens=24, hidden=16, device="cpu", dtype=torch.float32)
    grad = torch.randn_like(h[0])

    def model_fuse(h1, h2, h3, weight, bias):
        logits = torch.nn.functional.linear(torch.cat((h1, h2, h3), -1), weight, bias)[..., :3]
        return gated_sum(h1, h2, h3, logits)[0]

    results = {}
    for name, fn in {"model": model_fuse, **level_gate.VARIANTS}.items():
        for x in (*h, weight, bias):
            x.grad = None
        out = level_gate.step(fn, h, weight, bias, grad)
        results[name] = [out.detach().clone(), *(x.grad.clone() for x in (*h, weight, bias))]
    for name in level_gate.VARIANTS:
        for got, want in zip(results[name][:4], results["model"][:4]):  # output and the three levels' gradients
            torch.testing.assert_close(got, want)
        # the gate's used rows and bias get the same gradient; the unused rows none that reaches the output
        torch.testing.assert_close(results[name][4][:3], results["model"][4][:3])
        torch.testing.assert_close(results[name][5][:3], results["model"][5][:3])


def test_level_gate_benchmark_writes_a_row_per_form_and_mode(tmp_path, capsys):
    out = tmp_path / "gate.json"
    level_gate.main(["--tokens", "32", "--hidden", "16", "--repeats", "2", "--json", str(out)])
    record = json.loads(out.read_text())
    assert [(r["variant"], r["compiled"]) for r in record["rows"]] == [
        (name, compiled) for name in level_gate.VARIANTS for compiled in (False, True)
    ]
    assert all(r["us"] > 0 and r["max_rel_err_vs_first"] < 1e-4 for r in record["rows"])
    assert "matmul8" in capsys.readouterr().out
