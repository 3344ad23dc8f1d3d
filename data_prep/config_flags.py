"""Command-line flags generated from a settings dataclass: one flag per field, its help text the field's docstring.

The dataclass is the one source of truth: a field added to it gets a flag (``--field-name``, dest = the field's
name) and help text without touching the CLI. The type decides the flag's shape:

| field type | flag |
|---|---|
| ``bool`` defaulting to False / True | ``--name`` (store_true) / ``--no-name`` (store_false) |
| ``bool | None`` | ``--name`` / ``--no-name`` (``BooleanOptionalAction``), None when neither is given |
| ``list[str]`` | ``--name A B …`` (repeatable: the values extend the list) |
| ``tuple[float, float]`` | ``--name A B`` |
| ``int``, ``float``, ``str`` (``| None``) | ``--name VALUE`` of that type |

``FlagSpec`` changes what the type alone cannot say: another flag name (kept for existing command lines), the
choices, a metavar.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FlagSpec:
    flag: str | None = None
    """The flag's name when it is not ``--field-name`` (or ``--no-field-name`` for a field that defaults to True)."""
    choices: tuple[str, ...] | None = None
    """Allowed values."""
    metavar: str | tuple[str, ...] | None = None
    """How the value shows in --help."""


def field_docs(cls: type) -> dict[str, str]:
    """{field name: the docstring written under it}, through the class and its bases (a subclass's doc wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # the class statement's body
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _shape(tp: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether None is allowed)."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return tp, False


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    groups: dict[str, list[str]],
    specs: dict[str, FlagSpec] | None = None,
    *,
    other: str = "other settings",
) -> None:
    """One flag per field of ``cls``, in the argument groups of ``groups`` (title -> field names); fields listed in
    no group go into the group ``other``, so a new field still gets its flag."""
    specs = specs or {}
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    placed = [n for names in groups.values() for n in names]
    unknown = sorted(set(placed) - fields.keys())
    if unknown:
        raise ValueError(f"flag groups name fields {unknown} that {cls.__name__} does not have")
    rest = [n for n in fields if n not in placed]
    for title, names in [*groups.items(), *([(other, rest)] if rest else [])]:
        g = parser.add_argument_group(title)
        for name in names:
            _add_field(g, fields[name], hints[name], docs.get(name, ""), specs.get(name, FlagSpec()))


def _add_field(g: Any, f: dataclasses.Field, tp: Any, doc: str, spec: FlagSpec) -> None:
    default = field_default(f)
    dashed = "--" + f.name.replace("_", "-")
    kw: dict[str, Any] = {"dest": f.name, "default": default}
    base, optional = _shape(tp)
    origin = typing.get_origin(base)
    if base is bool and optional:
        kw["action"] = argparse.BooleanOptionalAction
        help_default = "unset"
    elif base is bool:
        kw["action"] = "store_false" if default else "store_true"
        dashed = f"--no-{f.name.replace('_', '-')}" if default else dashed
        doc = f"turn off (on by default): {doc}" if default else doc
        help_default = None
    elif origin is list:
        (item,) = typing.get_args(base)
        kw.update(nargs="+", action="extend", type=item, metavar=spec.metavar or "VALUE")
        help_default = " ".join(map(str, default)) or "none"
    elif origin is tuple:
        items = typing.get_args(base)
        kw.update(nargs=len(items), type=items[0], metavar=spec.metavar or tuple("VALUE" for _ in items))
        help_default = " ".join(map(str, default))
    else:
        kw["type"] = base
        if spec.metavar:
            kw["metavar"] = spec.metavar
        help_default = str(default)
    if spec.choices:
        kw["choices"] = spec.choices
    shown = doc if help_default is None else f"{doc} (default: {help_default})"
    kw["help"] = shown.replace("%", "%%")
    g.add_argument(spec.flag or dashed, **kw)
