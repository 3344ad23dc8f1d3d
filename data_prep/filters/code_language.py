"""Name the language of a source file from its extension (or a shebang); unknown languages are dropped.

The names are tree-sitter-language-pack grammar names, so the syntax filter can look the grammar up directly.
"""

from __future__ import annotations

import os

from data_prep.document import Document, FilterResult
from data_prep.filters.base import BaseFilter

EXTENSION_LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hh": "cpp",
    ".hpp": "cpp",
    ".hxx": "cpp",
    ".cu": "cuda",
    ".cuh": "cuda",
    ".java": "java",
    ".kt": "kotlin",
    ".scala": "scala",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "csharp",
    ".swift": "swift",
    ".lua": "lua",
    ".hs": "haskell",
    ".jl": "julia",
    ".r": "r",
    ".R": "r",
    ".sh": "bash",
    ".bash": "bash",
    ".zig": "zig",
    ".dart": "dart",
    ".ex": "elixir",
    ".exs": "elixir",
    ".erl": "erlang",
    ".ml": "ocaml",
    ".clj": "clojure",
    ".pl": "perl",
    ".sql": "sql",
}
SHEBANG_LANGUAGES = {"python": "python", "python3": "python", "bash": "bash", "sh": "bash", "node": "javascript"}


def detect_language(path: str, text: str) -> str | None:
    """Language for a file path (extension first, then a ``#!`` line), or None if not a known language."""
    ext = os.path.splitext(path)[1]
    lang = EXTENSION_LANGUAGES.get(ext) or EXTENSION_LANGUAGES.get(ext.lower())
    if lang:
        return lang
    if not ext and text.startswith("#!"):
        first = text.split("\n", 1)[0].split()
        # "#!/usr/bin/env python3" or "#!/bin/bash"
        prog = os.path.basename(first[1] if len(first) > 1 and first[0].endswith("env") else first[0][2:])
        return SHEBANG_LANGUAGES.get(prog)
    return None


class CodeLanguageFilter(BaseFilter):
    name = "language"

    def __init__(self, *, languages: tuple[str, ...] | None = None):
        self.languages = tuple(sorted(set(languages))) if languages else None
        """Languages to keep (grammar names); None keeps every language in EXTENSION_LANGUAGES."""

    def filter(self, doc: Document) -> FilterResult:
        lang = doc.metadata.get("language") or detect_language(doc.metadata.get("path", doc.source), doc.text)
        if lang is None:
            return False, "unknown_language"
        doc.metadata["language"] = lang
        if self.languages is not None and lang not in self.languages:
            return False, "excluded_language"
        return True
