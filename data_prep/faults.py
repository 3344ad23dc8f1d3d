"""Crash injection for the resume tests: ``DATA_PREP_CRASH_AT=<stage>:<n>`` SIGKILLs the process.

The process is killed (no cleanup, no ``finally``) right after the n-th unit of ``stage`` is committed, which is
the worst case a real crash produces. Stages: ``filter`` (parts, all modalities), ``pack`` (shards).
"""

from __future__ import annotations

import os
import signal

ENV = "DATA_PREP_CRASH_AT"


def maybe_crash(stage: str, count: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    want_stage, _, n = spec.partition(":")
    if want_stage == stage and n.isdigit() and count == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
