"""The package's structure: a module imports only from below it, so no import cycle anywhere.

Every import counts: at the top, inside functions, and under ``if TYPE_CHECKING:`` (a cycle that
only the type checker follows still means two modules that each need the other). Read from the
source with :mod:`ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import shmqueue

PACKAGE = Path(shmqueue.__file__).resolve().parent


def _module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]
) -> Iterator[str]:
    """The modules of ``modules`` that ``node``, in ``module``, imports.

    ``from .engine import ring`` imports the module ``engine.ring``; ``from .errors import
    ShmqueueError`` a name of the module ``errors``. A parent package, which Python imports first,
    is not counted: every module would depend on the package's ``__init__``.
    """
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name in modules)
        return
    if node.level == 0:
        base = node.module or ""
    else:
        # A package is the anchor of its own relative imports; a module's anchor is its package.
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            yield f"{base}.{alias.name}"
        elif base in modules:
            yield base


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}`` for every module under ``root``."""
    sources = {_module_name(root, path): path for path in sorted(root.rglob("*.py"))}
    modules = set(sources)
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_imported(node, module, is_package, modules))
        edges.discard(module)
        graph[module] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = {stack.pop()}
            while module not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest cycle through the group's first module, by breadth-first search."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(graph[module] & group):
                if target == start:
                    return [*paths[module], start]
                if target not in paths:
                    paths[target] = [*paths[module], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{sorted(group)} is strongly connected, so it has a cycle")


def test_no_module_of_the_package_imports_itself_back() -> None:
    cycles = import_cycles(import_graph(PACKAGE))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.fixture
def toy_package(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    (root / "engine").mkdir(parents=True)
    files = {
        "__init__.py": "from .queue import Queue\n",
        "errors.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from .memory import Estimate\n"
        ),
        "memory.py": "from .engine import ring\n",
        "queue.py": "import toy.errors\nfrom .engine.ring import Ring\n",
        "engine/__init__.py": "",
        "engine/ring.py": "def make():\n    from ..errors import RingError\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_type_checking_function_level_and_relative_imports_count(toy_package: Path) -> None:
    graph = import_graph(toy_package)
    assert graph == {
        "toy": {"toy.queue"},
        "toy.errors": {"toy.memory"},
        "toy.memory": {"toy.engine.ring"},
        "toy.queue": {"toy.errors", "toy.engine.ring"},
        "toy.engine": set(),
        "toy.engine.ring": {"toy.errors"},
    }
    assert import_cycles(graph) == [
        ["toy.engine.ring", "toy.errors", "toy.memory", "toy.engine.ring"]
    ]
