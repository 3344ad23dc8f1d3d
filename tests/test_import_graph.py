"""The r1_ds import graph, read with `ast` (no module is imported): no circle, and no r1_ds.parallel module
importing another r1_ds module inside a function body (a deferred import that would hide a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "r1_ds"
# third-party packages an r1_ds.parallel function may import lazily: optional or heavy at import time
DEFERRED_OK = {"deepspeed"}
# Function-body imports outside r1_ds.parallel that still close a circle, each (importer, imported); none today. The test
# checks that each one still exists: cut its circle, then delete its line here.
KNOWN_CIRCLE_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _resolve(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The absolute module an `from ... import` names (relative imports resolved against `name`)."""
    if node.level == 0:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported r1_ds module, line, inside a function body) for every import statement of a module; `from a
    import b` counts a.b when that is a module, else a."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                mod = _resolve(child, name, path.name == "__init__.py")
                for a in child.names:
                    sub = f"{mod}.{a.name}"
                    found.append((sub if sub in known else mod, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int, bool]]]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    raw: dict[str, list[tuple[str, int, bool]]] = {}
    for name, path in mods.items():
        raw[name] = imports(name, path, known)
        for target, _, _ in raw[name]:
            # importing a.b.c runs a and a.b first; only the r1_ds modules matter here
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                t = ".".join(parts[:i])
                if t in known and t != name and not name.startswith(t + "."):
                    edges[name].add(t)
    return edges, raw


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle (as a closed path) by depth-first search, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                hit = dfs(nxt)
                if hit:
                    return hit
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            hit = dfs(node)
            if hit:
                return hit
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_r1_ds_import_graph_has_no_cycle():
    edges, raw = graph()
    assert len(edges) > 30  # the walk found the package
    stale = [
        (a, b)
        for a, b in sorted(KNOWN_CIRCLE_EDGES)
        if not any(t == b and in_function for t, _, in_function in raw.get(a, []))
    ]
    assert not stale, f"KNOWN_CIRCLE_EDGES lists imports that are gone (delete them there): {stale}"
    for a, b in KNOWN_CIRCLE_EDGES:
        assert not b.startswith("r1_ds.parallel") and not a.startswith("r1_ds.parallel")
        edges[a].discard(b)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle in r1_ds: " + " -> ".join(cycle)


def test_parallel_defers_only_optional_third_party_imports():
    """Inside function bodies r1_ds.parallel imports only the optional heavy dependencies of DEFERRED_OK, never
    an r1_ds module (that would hide a circle) and nothing that could as well be imported at the top."""
    _, raw = graph()
    bad = [
        f"{name} line {line}: {target}"
        for name, found in raw.items()
        if name.startswith(f"{PACKAGE}.parallel")
        for target, line, in_function in found
        if in_function and target.split(".")[0] not in DEFERRED_OK
    ]
    assert not bad, (
        f"r1_ds.parallel imports inside function bodies (allowed there: {sorted(DEFERRED_OK)}):\n  " + "\n  ".join(bad)
    )
