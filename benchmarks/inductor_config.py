"""`--inductor KEY=VALUE` for the GPU benchmarks: set torch._inductor.config entries for one run, to measure a
compiler setting (cpp_wrapper=True: the compiled graphs launch their kernels from C++ instead of Python, which
targets a host-bound step) against the defaults in the same call."""

from __future__ import annotations

import ast


def apply(pairs: list[str] | None) -> dict:
    """Set each KEY=VALUE (VALUE a Python literal; dotted keys reach sub-configs, e.g. triton.cudagraphs=True).
    -> the settings applied, for the result's JSON. A key inductor does not have is an error naming it."""
    from torch._inductor import config

    applied = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--inductor {pair!r}: expected KEY=VALUE, e.g. --inductor cpp_wrapper=True")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--inductor {pair!r}: {raw!r} is not a Python literal (True, 1, 'x')") from None
        if key not in config.get_config_copy():  # its settings only (the module also holds functions)
            raise SystemExit(f"--inductor {pair!r}: torch._inductor.config has no setting {key!r}")
        *path, leaf = key.split(".")
        target = config
        for part in path:
            target = getattr(target, part)
        setattr(target, leaf, value)
        applied[key] = value
    return applied
