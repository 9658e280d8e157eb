"""The package's structure, as a rule about imports (not sizes): data flows one way, so no module of
simsearch imports, directly or through others, one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import simsearch

PACKAGE = Path(simsearch.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules this file imports, anywhere in it (inside functions and TYPE_CHECKING too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:  # `from . import paths` imports a module; `from .x import y`, module x
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_relative_imports() -> None:
    graph = _graph()
    assert len(graph) > 30 and "simsearch.store" in graph["simsearch.cli.common"]
    assert "simsearch.server" in graph["simsearch.cli.serving"]  # imported inside the command, from ..server
    assert "simsearch.paths" in graph["simsearch.catalog.schema"]  # from ..paths
    assert "simsearch.catalog.reads" in graph["simsearch.catalog"]  # from .reads


def test_no_import_circle_inside_simsearch() -> None:
    assert _cycles(_graph()) == []


def test_nothing_below_the_store_imports_a_front_end() -> None:
    graph = _graph()
    fronts = {m for m in graph if m.split(".")[:2] == ["simsearch", "cli"]} | {"simsearch.server", "simsearch.__main__"}
    assert [m for m, uses in graph.items() if uses & fronts and m not in fronts | {"simsearch.transport"}] == []
