"""Syntax gate for code: the tree-sitter parse must have no ERROR or MISSING node, and Python must ``compile()``.

This gate is a project addition: StarCoder and The Stack filter code by heuristics, not by parsing. Grammars come
from ``tree-sitter-language-pack==0.13.0``, whose wheel carries them (1.x downloads grammars at run time and fails
offline). ``compile()`` only compiles, it never executes; it catches what tree-sitter-python accepts but CPython
rejects (``print 'x'``, an empty class body).
"""

from __future__ import annotations

import warnings
from typing import Any

from data_prep.document import Document, FilterResult
from data_prep.filters.base import BaseFilter


def first_error(root: Any) -> tuple[str, int, int] | None:
    """(kind, row, column) of the first ERROR/MISSING node under ``root`` (0-based), or None if there is none."""
    if not root.has_error:
        return None
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_missing:
            return "missing " + node.type, node.start_point[0], node.start_point[1]
        if node.is_error:
            return "error", node.start_point[0], node.start_point[1]
        stack.extend(reversed([c for c in node.children if c.has_error]))
    return "error", 0, 0


def python_compile_error(source: str, filename: str = "<code>") -> str | None:
    """None if CPython compiles ``source`` (no execution), else the error as text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes etc. is not a failure
            compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class CodeSyntaxFilter(BaseFilter):
    name = "syntax"

    def __init__(self, *, python_compile: bool = True):
        self.python_compile = python_compile
        """Also require ``compile()`` to succeed for Python files (reason ``compile_error``)."""
        self._parsers: dict[str, Any] = {}

    def _parser(self, language: str) -> Any:
        parser = self._parsers.get(language)
        if parser is None:
            from tree_sitter_language_pack import get_parser  # lazy: loads the grammar's shared library

            parser = self._parsers[language] = get_parser(language)
        return parser

    def filter(self, doc: Document) -> FilterResult:
        lang = doc.metadata.get("language")
        if not lang:
            return False, "unknown_language"
        try:
            parser = self._parser(lang)
        except (LookupError, ValueError, ImportError, OSError):
            return False, "no_grammar"
        tree = parser.parse(doc.text.encode("utf-8", "surrogatepass"))
        err = first_error(tree.root_node)
        if err is not None:
            doc.metadata["syntax_error"] = f"{err[0]} at {err[1] + 1}:{err[2] + 1}"
            return False, "syntax_error"
        if self.python_compile and lang == "python":
            msg = python_compile_error(doc.text, doc.metadata.get("path", "<code>"))
            if msg is not None:
                doc.metadata["syntax_error"] = msg[:300]
                return False, "compile_error"
        return True
