"""The house has no import cycle: fathom_desktop's modules depend on each other one way only.

Every import counts, wherever it is written (module level, inside a function, under
TYPE_CHECKING): a cycle hidden in a function is still two modules that cannot be understood, or
moved, apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGE = "fathom_desktop"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in (PROJECT_ROOT / PACKAGE).rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's own modules that `name` imports (a submodule, not its package, when
    `from package import submodule`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in modules else base)
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(root, iter(sorted(graph[root])))]
        path.append(root)
        on_path.add(root)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            if child in on_path:
                return [*path[path.index(child) :], child]
            if child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
                on_path.add(child)
    return None


def test_fathom_desktop_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["fathom_desktop.gui.main_window"]  # the walk saw the code
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_the_cycle_finder_finds_cycles(edges, cycle):
    assert find_cycle(edges) == cycle


def test_the_session_is_below_the_window_and_above_the_engine_client():
    graph = import_graph()
    session = "fathom_desktop.gui.session"
    assert session in graph["fathom_desktop.gui.main_window"]
    assert "fathom_desktop.gui.worker" in graph[session]
    widget_free = {session, f"{session}_types", "fathom_desktop.gui.worker", "fathom_desktop.gui"}
    widgets = {name for name in graph if name.startswith("fathom_desktop.gui.")} - widget_free
    for module in widget_free:
        assert not graph[module] & widgets, f"{module} imports a widget module"
