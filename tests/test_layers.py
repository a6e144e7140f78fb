"""Imports go only downward (README, "Imports go only downward"): ``ingress/`` and ``workers/``
side by side on top, then ``billing/``, ``storage/``, and ``jobs/`` — the contract, which imports
nothing of ours. Every module is parsed, not imported, so an import inside a function or under
``TYPE_CHECKING`` counts as much as one at the top.

The ingress runs a worker through one dotted path (``ingress/cli.py`` ``WORKER_ENTRY``), not an
import: what that path names is checked here too.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What each package may import of ours besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "jobs": frozenset(),
    "storage": frozenset({"jobs"}),
    "billing": frozenset({"storage", "jobs"}),
    "workers": frozenset({"billing", "storage", "jobs"}),
    "ingress": frozenset({"billing", "storage", "jobs"}),
}
# Inside a package: a subpackage that must not reach up into the rest of it. The worker runtime
# is arq's Worker made faster; it knows no pool, job or provider.
INNER: dict[str, str] = {"workers.runtime": "workers"}


def imported(tree: ast.AST, package: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import in a module of ``package``, wherever it sits.

    A relative import is resolved first: ``from .. import settings`` in workers/runtime/ is
    workers.settings, and must count as much as the absolute spelling."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            if node.module:
                yield node.lineno, f"{base}.{node.module}"
            else:
                yield from ((node.lineno, f"{base}.{a.name}") for a in node.names)


def violations(root: Path) -> list[str]:
    found: list[str] = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            own = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rpartition(".")[0]
            for line, name in imported(ast.parse(path.read_text(), str(path)), own):
                top = name.split(".")[0]
                if top in ALLOWED and top != package and top not in allowed:
                    found.append(f"{path.relative_to(root)}:{line}: {package} imports {name}")
                for inner, outer in INNER.items():
                    if (module + ".").startswith(inner + ".") and top == outer \
                            and not (name + ".").startswith(inner + "."):
                        found.append(f"{path.relative_to(root)}:{line}: {inner} imports {name}")
    return sorted(set(found))


def test_every_import_goes_down() -> None:
    assert violations(ROOT) == []


def test_the_check_finds_an_upward_import_wherever_it_hides(tmp_path: Path) -> None:
    modules = {
        "ingress/chat.py": "from workers.settings import POOL_SETTINGS\n",
        "jobs/queue.py": "def f():\n    import storage.db\n",
        "storage/tasks.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ingress import app\n",
        "billing/cards.py": "from workers import runner\n",
        "workers/runtime/worker.py": "from workers import settings\nfrom workers.runtime import runloop\n",
        "workers/chat.py": "from billing import client\nfrom storage import egress\nfrom jobs import keys\n",
        "workers/runtime/runloop.py": "from .. import settings\nfrom ..providers import http\nfrom . import worker\n",
    }
    for name, text in modules.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "billing/cards.py:1: billing imports workers",
        "ingress/chat.py:1: ingress imports workers.settings",
        "jobs/queue.py:2: jobs imports storage.db",
        "storage/tasks.py:3: storage imports ingress",
        "workers/runtime/runloop.py:1: workers.runtime imports workers.settings",
        "workers/runtime/runloop.py:2: workers.runtime imports workers.providers",
        "workers/runtime/worker.py:1: workers.runtime imports workers",
    ]


def test_the_syncnode_command_reaches_a_worker_of_every_pool() -> None:
    from ingress.cli import WORKER_ENTRY
    from jobs import keys
    from workers.settings import POOL_SETTINGS

    module, _, name = WORKER_ENTRY.partition(":")
    assert callable(getattr(importlib.import_module(module), name))
    assert tuple(POOL_SETTINGS) == keys.POOLS  # `syncnode up` starts keys.POOLS
