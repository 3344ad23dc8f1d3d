"""R1 as any Hugging Face causal LM: the checks of transformers' own model and generation tests (left
padding, cache equivalence, hidden-state shapes, tuple outputs, save/load), written after them since
their mixins do not ship in the wheel, and the libraries people use around such a model (PEFT, Trainer,
pipeline, torch.compile, DeepSpeed's "auto" JSON).

Group edges matter for R1 (paragraphs of 8 tokens and documents of 32 in the tiny preset): the prompts
below cross them, and pads shift them unless each row is renumbered from its first token.
"""

import json
import pathlib

import pytest
import torch
import torch.nn.functional as F

from r1_ds.model import R1Config, R1ForCausalLM, R1ForSequenceClassification

ROOT = pathlib.Path(__file__).resolve().parents[1]
LENS = (37, 20, 5)  # across documents (32), paragraphs (8), and shorter than one paragraph
PAD = 0


def tiny(**overrides) -> R1Config:
    # A larger init than the depth-scaled default so that every level contributes visibly.
    return R1Config.from_preset(
        "tiny",
        **{
            "init_scheme": "normal",
            "initializer_range": 0.2,
            "pad_token_id": PAD,
            "bos_token_id": PAD,
            "eos_token_id": PAD,
            **overrides,
        },
    )


def model(seed=0, **overrides) -> R1ForCausalLM:
    torch.manual_seed(seed)
    return R1ForCausalLM(tiny(**overrides)).eval()


def prompts(seed=1, lens=LENS, vocab=512):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g) for n in lens]


def padded(rows, side):
    """(ids, attention_mask) of `rows` padded to the longest on `side`."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), PAD)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[i, span], mask[i, span] = r, 1
    return ids, mask


def greedy(m, ids, **kwargs):
    with torch.no_grad():
        return m.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=PAD, eos_token_id=None, **kwargs)


# ----------------------------------------------------------------------------- padding, positions, cache


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_forward_equals_each_prompt_alone(side):
    m = model()
    rows = prompts()
    ids, mask = padded(rows, side)
    with torch.no_grad():
        batch = m(ids, attention_mask=mask, use_cache=False).logits
        for i, r in enumerate(rows):
            alone = m(r[None], use_cache=False).logits[0]
            torch.testing.assert_close(batch[i][mask[i].bool()], alone, atol=1e-5, rtol=1e-5)
        # without the mask the pads are tokens: the answer differs (the test can fail)
        assert not torch.allclose(m(ids, use_cache=False).logits[2][mask[2].bool()], batch[2][mask[2].bool()])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_greedy_generation_equals_each_prompt_alone(side, use_cache):
    m = model(seed=3)
    rows = prompts(seed=4)
    ids, mask = padded(rows, side)
    out = greedy(m, ids, attention_mask=mask, use_cache=use_cache)[:, ids.shape[1] :]
    for i, r in enumerate(rows):
        assert torch.equal(out[i], greedy(m, r[None])[0, len(r) :]), f"row {i} ({side} padding)"


def test_left_padding_with_position_ids_as_transformers_tests_pass_them():
    # transformers' test_left_padding_compatibility: position_ids = cumsum(mask) - 1, pads filled with 1.
    m = model()
    rows = prompts()
    ids, mask = padded(rows, "left")
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        with_pos = m(ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        without = m(ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(with_pos, without, atol=0, rtol=0)


def test_manual_decoding_with_cache_equals_full_forward():
    # the cache-equivalence check of transformers' tests, on a left-padded batch
    m = model(seed=5)
    rows = [torch.cat([r, s]) for r, s in zip(prompts(seed=6), prompts(seed=7, lens=(6, 6, 6)))]
    ids, mask = padded(rows, "left")
    head = ids.shape[1] - 6
    with torch.no_grad():
        full = m(ids, attention_mask=mask, use_cache=False).logits[:, head:]
        out = m(ids[:, :head], attention_mask=mask[:, :head], use_cache=True)
        cache, steps = out.past_key_values if hasattr(out, "past_key_values") else out.cache, []
        for t in range(head, ids.shape[1]):
            out = m(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_packed_documents_from_position_ids_equal_separate_rows():
    # DataCollatorWithFlattening's form: one row, position_ids restarting at 0 where a document starts
    m = model()
    docs = prompts(lens=(13, 40, 9))
    ids = torch.cat(docs)[None]
    pos = torch.cat([torch.arange(len(d)) for d in docs])[None]
    labels = ids.clone()
    with torch.no_grad():
        packed = m(ids, position_ids=pos, use_cache=False).logits[0].split([len(d) for d in docs])
        for d, got in zip(docs, packed):
            torch.testing.assert_close(got, m(d[None], use_cache=False).logits[0], atol=1e-5, rtol=1e-5)
        assert m(ids, position_ids=pos, labels=labels).loss.isfinite()


@pytest.mark.parametrize(
    "position_ids, rule",
    [
        (lambda T: torch.arange(T)[None] + 3, "position_ids disagree with the token order"),
        (lambda T: torch.arange(T)[None].flip(-1), "position_ids disagree with the token order"),
        (lambda T: torch.arange(T + 1)[None], r"position_ids has shape \(1, 21\)"),
    ],
)
def test_position_ids_r1_cannot_honour_raise(position_ids, rule):
    m = model()
    ids = torch.randint(1, 512, (1, 20))
    with pytest.raises(ValueError, match=rule):
        m(ids, position_ids=position_ids(20))


def test_masks_r1_cannot_honour_raise():
    m = model()
    ids = torch.randint(1, 512, (2, 20))
    with pytest.raises(ValueError, match="2-D"):
        m(ids, attention_mask=torch.ones(2, 1, 20, 20))
    with pytest.raises(ValueError, match="cached \\+ new"):
        m(ids, attention_mask=torch.ones(2, 19))
    with pytest.raises(ValueError, match="only 0"):
        m(ids, attention_mask=torch.full((2, 20), 2))
    with pytest.raises(ValueError, match="output_attentions"):
        m(ids, output_attentions=True)
    docs = torch.cat([torch.arange(10), torch.arange(10)])[None]
    out = m(ids[:1], position_ids=docs, use_cache=True)  # packed documents: their cache cannot go on
    cache = out.past_key_values if hasattr(out, "past_key_values") else out.cache
    with pytest.raises(ValueError, match="packed documents"):
        m(ids[:1, :1], past_key_values=cache)


def test_flex_path_with_padding_equals_eager():
    m = model()
    rows = prompts()
    ids, mask = padded(rows, "left")
    with torch.no_grad():
        eager = m(ids, attention_mask=mask, use_cache=False).logits
        m.set_attn_implementation("flex_attention")
        flex = m(ids, attention_mask=mask, use_cache=False).logits
    valid = mask.bool()
    torch.testing.assert_close(flex[valid], eager[valid], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused GPU kernels need a CUDA device")
def test_cuda_flex_path_with_left_padding_equals_each_prompt_alone():
    # The GPU presets' geometry (paragraphs of 128, documents of 1024): each padded row's sequence runs through
    # the fused flex kernels on its own; logits match the eager reference, greedy tokens the prompt alone.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    m = (
        R1ForCausalLM(R1Config.from_preset("125m", num_hidden_layers=2, vocab_size=4096, pad_token_id=PAD))
        .cuda()
        .eval()
    )
    rows = [r.cuda() for r in prompts(lens=(1300, 300, 40), vocab=4096)]
    ids, mask = padded(rows, "left")
    valid = mask.bool()
    with torch.no_grad():
        m.set_attn_implementation("eager")
        eager = m(ids, attention_mask=mask, use_cache=False).logits[valid]
        m.set_attn_implementation("flex_attention")
        flex = m(ids, attention_mask=mask, use_cache=False).logits[valid]
        assert (flex - eager).abs().max() <= 2e-3 * eager.abs().max()
        out = greedy(m, ids, attention_mask=mask)[:, ids.shape[1] :]
        for i, r in enumerate(rows):
            assert torch.equal(out[i], greedy(m, r[None])[0, len(r) :]), f"row {i}"


# ----------------------------------------------------------------------------- outputs


def test_hidden_states_and_tuple_outputs():
    m = model()
    ids = torch.randint(1, 512, (2, 20))
    with torch.no_grad():
        out = m(ids, output_hidden_states=True, use_cache=False)
        tup = m(ids, labels=ids, return_dict=False, use_cache=False)
        base = m.model(ids, return_dict=False, use_cache=False)
    L, d = m.config.num_hidden_layers, m.config.hidden_size
    assert len(out.hidden_states) == L + 1 and all(h.shape == (2, 20, d) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[0], m.model.embed_tokens(ids))
    torch.testing.assert_close(m.lm_head(out.hidden_states[-1]), out.logits)  # the last one is normed
    assert isinstance(tup, tuple) and tup[0].ndim == 0 and tup[1].shape == (2, 20, m.config.vocab_size)
    assert isinstance(base, tuple) and base[0].shape == (2, 20, d)
    cls = R1ForSequenceClassification(tiny(num_labels=3)).eval()
    assert cls(ids, output_hidden_states=True).hidden_states[-1].shape == (2, 20, d)


def test_default_loss_is_plain_cross_entropy():
    m = model()
    assert R1Config().label_smoothing == 0.0
    x = torch.randint(0, 512, (2, 20))
    out = m(x, labels=x, use_cache=False)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, 512), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)


def test_label_smoothing_is_the_trainers_setting():
    from r1_ds.config import ConfigError, load_train_config
    from r1_ds.train import build_model

    trained = build_model(load_train_config(None, {"schedule.label_smoothing": 0.05}), "cpu")
    assert trained.config.label_smoothing == 0.05
    assert build_model(load_train_config(None, {}), "cpu").config.label_smoothing == 0.1  # the trainer's default
    with pytest.raises(ConfigError, match="schedule.label_smoothing"):
        load_train_config(None, {"schedule.label_smoothing": 1.5})


def test_sequence_classification_pools_the_last_token_on_either_side():
    torch.manual_seed(0)
    m = R1ForSequenceClassification(tiny(num_labels=3)).eval()
    rows = prompts()
    with torch.no_grad():
        alone = torch.cat([m(r[None]).logits for r in rows])
        for side in ("left", "right"):
            ids, mask = padded(rows, side)
            torch.testing.assert_close(m(ids, attention_mask=mask).logits, alone, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- an exported folder


TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "import os\nprint(os.getcwd())\n",
    "The quick brown fox jumps over the lazy dog.\n",
    "for i in range(10):\n    print(i * i)\n",
] * 20


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """What `r1-ds export` writes (weights, code, configs, tokenizer, model card), from a tiny random model and a
    real byte-level BPE tokenizer of `r1-ds prep`."""
    from transformers import AutoTokenizer

    from data_prep.tokenizer_train import train_tokenizer
    from r1_ds.model_card import prepare_release, write_model_card

    root = tmp_path_factory.mktemp("release")
    train_tokenizer(TEXTS, root / "tok", vocab_size=300, min_frequency=1)
    tok = AutoTokenizer.from_pretrained(root / "tok", padding_side="left")
    torch.manual_seed(0)
    m = R1ForCausalLM(
        R1Config.from_preset("tiny", vocab_size=320, init_scheme="normal", initializer_range=0.2, label_smoothing=0.1)
    ).eval()
    prepare_release(m, tok)
    out = root / "hf"
    m.save_pretrained(out)
    tok.save_pretrained(out)
    write_model_card(
        str(out),
        m.config,
        step=7,
        layout={"pipe": 2, "tensor": 1, "data": 1},
        has_tokenizer=True,
        train_config={"data": {"path": "synthetic"}, "schedule": {"steps": 7, "label_smoothing": 0.1}},
    )
    return out


def test_release_folder_carries_ids_auto_map_and_model_card(release):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(release)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((release / name).read_text())
        assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (eos, eos, eos), name
    cfg = json.loads((release / "config.json").read_text())
    assert cfg["label_smoothing"] == 0.0
    assert set(cfg["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForCausalLM",
        "AutoModelForSequenceClassification",
    }
    card = (release / "README.md").read_text()
    for part in ("## Architecture", "## Training", "## How to load", "Steps: 7 of 7", "synthetic"):
        assert part in card, part
    assert type(AutoModel.from_pretrained(release)).__name__ == "R1Model"
    cls = AutoModelForSequenceClassification.from_pretrained(release, num_labels=2)
    assert type(cls).__name__ == "R1ForSequenceClassification"


def test_generate_stops_at_end_of_text(release):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(release).eval()
    eos = m.generation_config.eos_token_id
    with torch.no_grad():  # make end-of-text the most likely next token whatever the input
        m.lm_head.weight[eos] += 50.0 * m.model.norm.weight.sign() / m.model.norm.weight.abs().clamp(min=1e-3)
        out = m.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=10, do_sample=False)
    assert out.shape[1] < 3 + 10 and out[0, -1] == eos


def test_text_generation_pipeline_with_a_batch_equals_one_prompt_at_a_time(release):
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(release), device="cpu")
    texts = ["def add(a", "import os\nprint(", "x"]
    kw = dict(max_new_tokens=10, do_sample=False, return_full_text=False)
    batched = pipe(texts, batch_size=3, **kw)
    alone = [pipe(t, **kw) for t in texts]
    assert [b[0]["generated_text"] for b in batched] == [a[0]["generated_text"] for a in alone]


# ----------------------------------------------------------------------------- libraries around the model


def test_lm_eval_hflm_batches_give_what_one_at_a_time_gives(release):
    lm_eval = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(release).eval()
    tok = AutoTokenizer.from_pretrained(release)
    ll = [
        Instance("loglikelihood", {}, pair, i)
        for i, pair in enumerate([("def add(a", ", b):"), ("import", " os"), ("x", " = 1")])
    ]
    gen = [
        Instance("generate_until", {}, (c, {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}), i)
        for i, c in enumerate(["def add(a", "import os\nprint(", "x"])
    ]
    batched, alone = (lm_eval.HFLM(pretrained=m, tokenizer=tok, batch_size=n, device="cpu") for n in (3, 1))
    torch.testing.assert_close(
        [x for x, _ in batched.loglikelihood(ll)], [x for x, _ in alone.loglikelihood(ll)], atol=1e-4, rtol=1e-4
    )
    assert batched.generate_until(gen) == alone.generate_until(gen)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj", "o_proj"]])
def test_peft_lora_trains_the_adapters_only(targets):
    from peft import LoraConfig, get_peft_model

    m = model()
    lora = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    wrapped = {n.rsplit(".", 1)[-1] for n, mod in lora.named_modules() if hasattr(mod, "lora_A")}
    assert "gate" not in wrapped and {"q_proj", "v_proj", "o_proj"} <= wrapped
    lora.train()
    x = torch.randint(1, 512, (2, 24))
    out = lora(input_ids=x, labels=x)
    out.loss.backward()
    grads = {n for n, p in lora.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_hf_trainer_runs_a_few_steps_and_learns(tmp_path):
    from transformers import Trainer, TrainingArguments

    m = model()
    m.train()
    x = torch.randint(1, 512, (8, 24))
    data = [{"input_ids": r, "labels": r} for r in x]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(model=m, args=args, train_dataset=data)
    before = m.model.layers[0].self_attn.gate.weight.detach().clone()
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert not torch.equal(before, m.model.layers[0].self_attn.gate.weight)


def test_torch_compile_of_the_forward_equals_eager():
    m = model()
    x = torch.randint(1, 512, (2, 24))
    compiled = torch.compile(m, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(x, use_cache=False).logits, m(x, use_cache=False).logits, atol=1e-5, rtol=1e-5
        )


def test_deepspeed_auto_json_is_filled_by_hf_trainer_and_read_by_accelerate(tmp_path):
    from accelerate.utils import DeepSpeedPlugin
    from transformers import TrainingArguments

    path = str(ROOT / "ds_configs" / "hf_trainer_auto.json")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        deepspeed=path,
        use_cpu=True,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=3e-4,
        max_grad_norm=0.5,
        report_to=[],
    )
    filled = args.hf_deepspeed_config
    filled.trainer_config_finalize(args, model(), 100)
    assert "auto" not in json.dumps(filled.config)
    c = filled.config
    assert (c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"], c["gradient_clipping"]) == (
        4,
        2,
        0.5,
    )
    assert c["optimizer"]["params"]["lr"] == 3e-4 and c["scheduler"]["params"]["total_num_steps"] == 100
    plugin = DeepSpeedPlugin(hf_ds_config=path)  # accelerate fills "auto" from its own arguments at prepare()
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 1
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"


def test_r1_ds_train_refuses_the_auto_json_by_name():
    from r1_ds.config import ConfigError, load_train_config
    from r1_ds.train import build_ds_config

    ds = json.loads((ROOT / "ds_configs" / "hf_trainer_auto.json").read_text())
    with pytest.raises(ConfigError, match=r'"auto" at \[.*optimizer.params.lr.*\].*Fix:'):
        build_ds_config(load_train_config(None, {}), ds, world_size=1, device_type="cpu")


# ----------------------------------------------------------------------------- tracking, CLI, packaging


def _monitor_body(out_dir):
    from deepspeed.monitor.config import get_monitor_config
    from deepspeed.monitor.monitor import MonitorMaster

    from r1_ds.metrics import MetricsWriter

    monitor = MonitorMaster(
        get_monitor_config(
            {
                "tensorboard": {"enabled": True, "output_path": out_dir, "job_name": "tb"},
                "csv_monitor": {"enabled": True, "output_path": out_dir, "job_name": "csv"},
            }
        )
    )
    writer = MetricsWriter(out_dir, total_steps=2, start_step=0, tensorboard=False, progress=False, monitor=monitor)
    for step in (1, 2):
        writer.write(
            {
                "step": step,
                "loss": 3.0 / step,
                "tokens_per_s": 1000.0 * step,
                "mfu": 0.25,
                "grad_norm": 1.5,
                "compression/ratio": 0.05,
                "loss_scale": None,
            },
            monitor_step=16 * step,
        )
    tb = monitor.tb_monitor.summary_writer
    writer.close()
    return {"tb_closed": tb.all_writers is None or tb.file_writer is None}


@pytest.mark.slow
def test_deepspeed_monitor_gets_r1_metrics_and_is_closed(tmp_path):
    from r1_ds.local_ranks import run_distributed

    (res,) = run_distributed(_monitor_body, 1, str(tmp_path), timeout=120)
    assert res["tb_closed"]
    csv_dir = tmp_path / "csv"
    for name in ("loss", "tokens_per_s", "mfu", "grad_norm", "compression_ratio"):
        rows = (csv_dir / f"Train_R1_{name}.csv").read_text().splitlines()
        assert [r.split(",")[0] for r in rows[1:]] == ["16", "32"], name
    assert not (csv_dir / "Train_R1_loss_scale.csv").exists()  # None is not a number: not logged
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_help_imports_neither_torch_nor_deepspeed():
    import subprocess
    import sys

    code = (
        "import sys; from r1_ds.cli import main; main(['--help']); "
        "print(sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_and_flag_has_help(capsys):
    import argparse

    from r1_ds.cli import COMMANDS, _load, main

    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert f"    {name} " in listed
        add_arguments, _ = _load(command)
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        missing = [
            a.option_strings or a.dest
            for a in parser._actions
            if not a.help and not isinstance(a, argparse._HelpAction)
        ]
        assert not missing, f"r1-ds {name}: flags without help: {missing}"
    shown = [
        line.split()[0]
        for line in listed.split("positional arguments:")[1].splitlines()[2:]
        if line.startswith("    ") and not line.startswith("      ")
    ]
    assert shown == list(COMMANDS)  # no command named in help that does not exist


def test_every_imported_package_is_declared_in_pyproject():
    import ast
    import importlib.metadata
    import sys

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        r.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower().replace("_", "-")
        for r in project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    }
    dists = importlib.metadata.packages_distributions()
    ours = {"r1_ds", "data_prep", "tests", "benchmarks"}
    undeclared = set()
    for path in [*(ROOT / "r1_ds").rglob("*.py"), *(ROOT / "data_prep").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top in ours or top in sys.stdlib_module_names:
                    continue
                if not {d.lower().replace("_", "-") for d in dists.get(top, [top])} & declared:
                    undeclared.add(f"{top} ({path.relative_to(ROOT)})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"


def _readme_demo_commands() -> tuple[list[list[str]], dict]:
    """The README's copy-paste block: its commands (continuations joined, comments dropped) and exports."""
    import shlex

    text = (ROOT / "README.md").read_text()
    block = text.split("run the same steps with the same settings:\n\n```bash\n", 1)[1].split("```", 1)[0]
    commands, env = [], {}
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] == "source" or words[0].startswith("VOCAB="):
            continue
        if words[0] == "export":
            env.update(w.split("=", 1) for w in words[1:])
        else:
            commands.append(words)
    return commands, env


def test_readme_commands_are_what_the_demo_runs(tmp_path, monkeypatch):
    import sys

    from r1_ds import demo

    for key in ("DS_ACCELERATOR", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    shards = tmp_path / "outputs/demo/data/shards"
    shards.mkdir(parents=True)
    (shards / "meta.json").write_text(json.dumps({"num_sequences": 1, "seq_len": 128, "vocab_size": 1999}))
    (tmp_path / "outputs/demo/run").mkdir()
    (tmp_path / "outputs/demo/run/metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    ran = []
    monkeypatch.setattr(demo, "_run", lambda cmd, env: ran.append((cmd, env)))
    # the steps that read what the commands would have written (nothing here: _run only records)
    monkeypatch.setattr("r1_ds.evaluation.demo_table.evaluation_table", lambda *a, **k: "")
    monkeypatch.setattr("r1_ds.align.trainer.read_retrieval", lambda path: {})
    parser = __import__("argparse").ArgumentParser()
    demo.add_arguments(parser)
    assert demo.run(parser.parse_args([])) == 0

    def as_typed(cmd):  # the demo's interpreter paths -> the commands a user types
        if cmd[:3] == [sys.executable, "-m", "data_prep"]:
            cmd = ["r1-ds", "prep", *cmd[3:]]
        elif cmd[:3] == [sys.executable, "-m", "r1_ds.cli"]:
            cmd = ["r1-ds", *cmd[3:]]
        elif pathlib.Path(cmd[0]).name == "deepspeed":
            cmd = ["deepspeed", *cmd[1:]]
        return [w.replace("=1999", "=$VOCAB").replace(str(ROOT / "ds_configs"), "ds_configs") for w in cmd]

    readme, exported = _readme_demo_commands()
    assert readme == [as_typed(cmd) for cmd, _ in ran]
    for key, value in exported.items():
        assert all(env[key] == value for _, env in ran), key
    assert {"DS_ACCELERATOR", "OMP_NUM_THREADS", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"} <= set(exported)
