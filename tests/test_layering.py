"""The package's layering: no import cycles between subpackages, no private name across them.

Every module under ``src/vulnscope`` is parsed with :mod:`ast` (nothing is imported), and
every import is read: at module level and inside functions, ``import x`` and
``from x import y``, absolute and relative. Each module belongs to one *node*: a
subpackage (``vulnscope.attacks``, ``vulnscope.rg``...) or a top-level module
(``vulnscope.cli``, ``vulnscope.errors``...). The package root ``vulnscope/__init__.py`` is
the public facade and is left out of the graph.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "vulnscope"


@dataclass(frozen=True)
class Import:
    """One imported name: ``module`` (absolute, dotted) and ``name`` (``None`` for ``import x``)."""

    importer: str
    module: str
    name: str | None
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((SOURCE / PACKAGE).rglob("*.py"))}


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    # The package a relative import starts from: the module's own package, or the module
    # itself when it is a package's __init__.
    base = module.split(".") if _is_package(path) else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                target = node.module or ""
            for alias in node.names:
                yield Import(module, target, alias.name, node.lineno)


def _all_imports() -> list[Import]:
    return [item for module, path in _modules().items() for item in _imports(module, path)]


def _node(module: str) -> str | None:
    """The graph node a ``vulnscope`` module belongs to (``None`` outside, or the root)."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) == 1:
        return None
    return ".".join(parts[:2])


def _resolve(item: Import, modules: dict[str, Path]) -> str:
    """The module an import reaches (``from vulnscope.rg import analysis``: ``rg.analysis``)."""
    if item.name is not None and f"{item.module}.{item.name}" in modules:
        return f"{item.module}.{item.name}"
    return item.module


def dependency_graph() -> dict[str, set[str]]:
    """Node -> the other nodes it imports from."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module in modules:
        node = _node(module)
        if node is not None:
            graph.setdefault(node, set())
    for item in _all_imports():
        source = _node(item.importer)
        target = _node(_resolve(item, modules))
        if source is not None and target is not None and source != target:
            graph[source].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` when it is acyclic."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if colour.get(successor, white) == grey:
                return [*stack[stack.index(successor) :], successor]
            if colour.get(successor, white) == white:
                found = visit(successor)
                if found is not None:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(graph):
        if colour[node] == white:
            found = visit(node)
            if found is not None:
                return found
    return None


def _witnesses(source: str, target: str) -> list[str]:
    modules = _modules()
    return [
        f"{item.importer}:{item.line} imports {_resolve(item, modules)}"
        + ("" if item.name is None else f" ({item.name})")
        for item in _all_imports()
        if _node(item.importer) == source and _node(_resolve(item, modules)) == target
    ]


def _private_part(module: str, name: str | None) -> str | None:
    """The first private component of ``module.name`` below the node, if any."""
    parts = module.split(".")[2:] + ([] if name is None else [name])
    return next((part for part in parts if part.startswith("_") and part != "__future__"), None)


def private_crossings() -> list[str]:
    """Imports that reach a private name or module of another subpackage.

    The package root's private modules (``vulnscope._validation``, ``vulnscope._io``...)
    are shared by every subpackage, so only names *inside* a node count: a module or a
    name starting with ``_`` in ``vulnscope.rg`` may be imported only from ``vulnscope.rg``.
    """
    modules = _modules()
    found = []
    for item in _all_imports():
        target_module = _resolve(item, modules)
        source, target = _node(item.importer), _node(target_module)
        if target is None or source == target:
            continue
        name = None if target_module != item.module else item.name
        private = _private_part(target_module, name)
        if private is not None:
            found.append(f"{item.importer}:{item.line} imports {private!r} from {target_module}")
    return found


def test_the_graph_covers_every_subpackage_and_top_level_module() -> None:
    graph = dependency_graph()
    for node in ("vulnscope.attacks", "vulnscope.rg", "vulnscope.cli", "vulnscope.errors"):
        assert node in graph
    # Function-level imports are read too: the CLI imports the audit only inside a command.
    assert "vulnscope.audit" in graph["vulnscope.cli"]


def test_subpackages_import_each_other_without_cycles() -> None:
    graph = dependency_graph()
    cycle = find_cycle(graph)
    if cycle is not None:
        lines = [" -> ".join(cycle)]
        for source, target in itertools.pairwise(cycle):
            lines.extend(f"  {witness}" for witness in _witnesses(source, target))
        raise AssertionError("import cycle between subpackages:\n" + "\n".join(lines))


def test_no_private_name_is_imported_from_another_subpackage() -> None:
    crossings = private_crossings()
    assert not crossings, "private names used across subpackages:\n" + "\n".join(crossings)


def test_the_cycle_finder_reports_a_cycle_and_accepts_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_relative_imports_resolve_to_absolute_modules(tmp_path: Path) -> None:
    path = tmp_path / "module.py"
    path.write_text(
        "from . import x\nfrom ..rg import analysis\nfrom .y import _z\n\n"
        "def f():\n    import vulnscope.cli\n"
    )
    found = {(i.module, i.name) for i in _imports("vulnscope.cloning.module", path)}
    assert found == {
        ("vulnscope.cloning", "x"),
        ("vulnscope.rg", "analysis"),
        ("vulnscope.cloning.y", "_z"),
        ("vulnscope.cli", None),
    }
