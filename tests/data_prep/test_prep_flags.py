"""`r1-ds prep` flags are generated from PrepConfig's fields and docstrings: every field has a flag with its docstring
as help, a field added to the config gets one, and the existing flag names parse as before."""

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from data_prep import cli
from data_prep.config_flags import FlagSpec, add_dataclass_arguments, field_docs
from data_prep.prep import PrepConfig


def _parser():
    parser = argparse.ArgumentParser()
    cli.add_prep_arguments(parser)
    return parser


def test_every_field_has_a_flag_with_its_docstring():
    parser = _parser()
    by_dest = {a.dest: a for a in parser._actions}
    docs = field_docs(PrepConfig)
    for f in dataclasses.fields(PrepConfig):
        assert f.name in by_dest, f.name
        assert docs[f.name] and docs[f.name] in by_dest[f.name].help, f.name
    defaults = cli._config_from_args(parser.parse_args([]))
    assert defaults == PrepConfig()  # the flags' defaults are the config's


def test_existing_flag_names_parse_into_the_config():
    args = _parser().parse_args(
        [
            "--text",
            "a.jsonl",
            "--text",
            "b.jsonl",
            "--train-quality-head",
            "labels.jsonl",
            "--docstring-pairs",
            "3",
            "--no-image-flip",
            "--no-python-compile",
            "--no-langid",
            "--languages",
            "en",
            "de",
            "--image-crop-scale",
            "0.5",
            "0.9",
            "--no-clip-decode-processes",
            "--executor",
            "local",
            "--workers",
            "2",
            "--tasks",
            "8",
            "--near-dedup",
            "--quality-max-length",
            "64",
            "--id-field",
            "uid",
        ]
    )
    cfg = cli._config_from_args(args)
    assert (cfg.text, cfg.quality_labels, cfg.docstring_pairs_per_file) == (["a.jsonl", "b.jsonl"], "labels.jsonl", 3)
    assert (cfg.image_flip, cfg.python_compile, cfg.langid, cfg.languages) == (False, False, False, ["en", "de"])
    assert (cfg.image_crop_scale, cfg.clip_decode_processes) == ((0.5, 0.9), False)
    assert (cfg.executor, cfg.workers, cfg.tasks, cfg.near_dedup) == ("local", 2, 8, True)
    assert (cfg.quality_max_length, cfg.id_field) == (64, "uid")
    with pytest.raises(SystemExit):
        _parser().parse_args(["--clip-mode", "best"])  # choices still checked


def test_a_new_field_gets_a_flag_and_help():
    @dataclass
    class Grown(PrepConfig):
        dedup_shards: int | None = None
        """Buckets of the exact dedup."""
        strict: bool = True
        """Refuse odd inputs."""
        keep: list[str] = field(default_factory=list)
        """Ids to keep."""

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Grown, {"inputs": ["out"]}, {"keep": FlagSpec(metavar="ID")})
    helps = {a.dest: a.help for a in parser._actions}
    assert "Buckets of the exact dedup." in helps["dedup_shards"] and "Refuse odd inputs." in helps["strict"]
    args = parser.parse_args(["--dedup-shards", "4", "--no-strict", "--keep", "a", "b", "--text", "x"])
    assert (args.dedup_shards, args.strict, args.keep, args.text) == (4, False, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="nope"):
        add_dataclass_arguments(argparse.ArgumentParser(), Grown, {"g": ["nope"]})
