"""`r1-ds` command line: one subcommand per stage. Each stage module exposes
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their subcommand
runs, so `r1-ds --help` stays fast and a missing optional dependency only affects its stage."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

# subcommand -> (module, one-line help)
COMMANDS = {
    "prep": ("data_prep.cli", "clean, label and augment a text/image/code corpus; train a tokenizer; pack shards"),
    "train": ("r1_ds.train", "train an R1 model with DeepSpeed (launch with deepspeed, torchrun or accelerate)"),
    "export": ("r1_ds.export", "convert a DeepSpeed checkpoint (any parallel layout) to one Hugging Face folder"),
    "generate": ("r1_ds.generate", "generate text from a Hugging Face folder"),
    "eval": ("r1_ds.evaluation.cli", "evaluate a Hugging Face folder: perplexity, HumanEval pass@k, GLUE, retrieval"),
    "plot": ("r1_ds.plot", "plot the loss curve of a run from its metrics.jsonl"),
    "demo": ("r1_ds.demo", "the end-to-end demo on the built-in sample data (what `make demo` runs)"),
}


def _load(module: str):
    mod = importlib.import_module(module)
    if module == "data_prep.cli":  # data_prep names its hooks after its own stage
        return mod.add_prep_arguments, mod.run_prep
    return mod.add_arguments, mod.run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="r1-ds", description="R1 models with DeepSpeed: prep, train, export, eval.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"r1-ds: error: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    add_arguments, run = _load(COMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"r1-ds {name}", description=COMMANDS[name][1])
    add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(run(args) or 0)


def script() -> NoReturn:
    """The `r1-ds` console script: `main`, then `exit_process` (a rank ends without the interpreter's
    teardown once it ran a process group; see r1_ds.train.exit_process). Tests call `main`."""
    code = main()
    if "r1_ds.train" in sys.modules:  # only `train` starts process groups
        sys.modules["r1_ds.train"].exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    script()
