"""Optional dependencies (pyproject extras): imported where a feature needs them, with a message that
names the extra when one is missing."""

from __future__ import annotations

import importlib


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the feature and the pip command."""


def require(module: str, *, extra: str, purpose: str):
    """`module`, imported; MissingExtra naming `purpose` and `pip install 'r1_ds[extra]'` when absent."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not installed "
            f"({err}). Fix: pip install 'r1_ds[{extra}]'"
        ) from err
