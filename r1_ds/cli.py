"""`r1-ds` command line: one subcommand per stage. Each stage module exposes
`add_arguments(parser)` and `run(args) -> int` (or names its own hooks in COMMANDS); modules are
imported only when their subcommand runs, so `r1-ds --help` imports neither torch nor DeepSpeed and
a missing optional dependency only affects its stage. A new subcommand is one COMMANDS entry."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NamedTuple, NoReturn


class Command(NamedTuple):
    module: str  # imported only when the subcommand runs
    help: str  # one line, shown by `r1-ds --help`
    add_arguments: str = "add_arguments"  # the module's hook that declares the flags
    run: str = "run"  # the module's hook that runs, returns the exit code


COMMANDS = {
    "prep": Command(
        "data_prep.cli",
        "clean, label and augment a text/image/code corpus; train a tokenizer; pack shards",
        "add_prep_arguments",
        "run_prep",
    ),
    "train": Command("r1_ds.train", "train an R1 model with DeepSpeed (launch with deepspeed, torchrun or accelerate)"),
    "export": Command(
        "r1_ds.export", "convert a DeepSpeed checkpoint (any parallel layout) to one Hugging Face folder"
    ),
    "generate": Command("r1_ds.generate", "generate text from a Hugging Face folder"),
    "eval": Command(
        "r1_ds.evaluation.cli", "evaluate a Hugging Face folder: perplexity, HumanEval pass@k, GLUE, retrieval"
    ),
    "plot": Command("r1_ds.plot", "plot the loss curve of a run from its metrics.jsonl"),
    "demo": Command("r1_ds.demo", "the end-to-end demo on the built-in sample data (what `make demo` runs)"),
}


def _load(command: Command):
    mod = importlib.import_module(command.module)
    return getattr(mod, command.add_arguments), getattr(mod, command.run)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="r1-ds", description="R1 models with DeepSpeed: " + ", ".join(COMMANDS) + ".")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"r1-ds: error: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    add_arguments, run = _load(COMMANDS[name])
    sub_parser = argparse.ArgumentParser(prog=f"r1-ds {name}", description=COMMANDS[name].help)
    add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(run(args) or 0)


def script() -> NoReturn:
    """The `r1-ds` console script: `main`, then `exit_process` (a rank ends without the interpreter's
    teardown once it ran a process group; see r1_ds.distributed.exit_process). Tests call `main`."""
    from .distributed import exit_process

    exit_process(main())


if __name__ == "__main__":
    script()
