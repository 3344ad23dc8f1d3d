"""Build, once per machine, the DeepSpeed CPU op that its first distributed init would otherwise
build in the middle of a run (or a test). Safe to run again: DeepSpeed caches the build."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("r1_ds.ops_prebuild")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        from deepspeed.accelerator import get_accelerator
    except ImportError as err:  # deepspeed missing: the install step above failed and says why
        raise SystemExit(f"deepspeed is not importable ({err}); reinstall with `make install`")
    acc = get_accelerator()
    if acc.device_name() != "cpu":
        return  # GPU machines build their ops on demand
    builder_cls = acc.get_op_builder("ShareMemCommBuilder")
    if builder_cls is None:
        return
    builder = builder_cls()
    if builder.is_compatible():
        log.info("building DeepSpeed's CPU communication op once (cached under ~/.cache/torch_extensions)")
        builder.load(verbose=False)


if __name__ == "__main__":
    main()
