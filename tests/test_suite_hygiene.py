"""The suite's own habits, checked like any other behaviour."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def _imported_modules(tree: ast.Module) -> list[str]:
    """Each imported module; ``from pkg import name`` counts as ``pkg.name`` (it may be a module)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            sep = "" if base.endswith(".") else "."  # `from . import x` is `.x`
            names += [f"{base}{sep}{a.name}" for a in node.names]
    return names


def test_no_test_file_imports_another() -> None:
    """A helper two files need lives in tests/helpers.py (or fixtures/, fakes/): importing a test
    file runs its module-level code a second time and ties one file's tests to another's names."""
    offenders = [
        f"{path.relative_to(TESTS.parent)} imports {name}"
        for path in sorted(TESTS.rglob("*.py"))
        for name in _imported_modules(ast.parse(path.read_text(), str(path)))
        if any(part.startswith("test_") for part in name.split("."))
    ]
    assert not offenders, "\n".join(offenders)
