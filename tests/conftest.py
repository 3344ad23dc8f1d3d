"""Shared pytest setup: make `tests.*` helpers and `benchmarks.tiny_lm` importable however pytest is started."""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
