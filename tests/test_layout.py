"""The package's layout holds: subpackages by concern, each importing only the layers below it, no circles,
small modules. Read from the source with ``ast``, so a new import that breaks the layering fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ollama_metrics_proxy"
TOP = "ollama_metrics_proxy"
MAX_MODULE_LINES = 500
MAX_TOP_LEVEL_MODULES = 6

# What each part may import, besides itself. "helpers" are the modules left at the top of the package.
# The order reads bottom up; ``app`` wires everything and nothing imports it.
ALLOWED: dict[str, set[str]] = {
    "helpers": {"helpers"},
    "config": {"helpers"},
    "upstream": {"helpers"},
    "observe": {"helpers"},
    "telemetry": {"helpers", "config", "upstream"},
    "usage": {"helpers", "config", "observe"},
    "metrics": {"helpers", "config", "observe", "usage"},
    "relay": {"helpers", "config", "upstream", "observe", "usage", "metrics"},
    "app": {"helpers", "config", "upstream", "observe", "telemetry", "usage", "metrics", "relay"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((TOP, *parts))] = path
    return found


def part_of(module: str) -> str:
    """The subpackage a module belongs to, or "helpers" for a module at the top (and the package itself)."""
    parts = module.split(".")
    if module == f"{TOP}.__main__":
        return "app"  # `python -m ollama_metrics_proxy` is the program's entry point, as app.cli is
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "helpers"


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package's modules this one imports at run time (imports only for the type checker left out)."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(TOP))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(TOP):
            for alias in node.names:  # `from pkg import module` names a module; `from module import name` does not
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def test_every_part_imports_only_the_layers_below_it() -> None:
    wrong = [f"{module} ({part_of(module)}) imports {target} ({part_of(target)})"
             for module, targets in import_graph().items() for target in sorted(targets)
             if part_of(target) != part_of(module) and part_of(target) not in ALLOWED[part_of(module)]]
    assert wrong == []


def test_the_import_graph_has_no_circles() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif state.get(target) is None:
                visit(target, [*path, target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_at_most_six_modules_are_left_at_the_top() -> None:
    top_modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top_modules) <= MAX_TOP_LEVEL_MODULES, top_modules


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_is_over_500_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("part", sorted(set(ALLOWED) - {"helpers"}))
def test_each_subpackage_says_what_it_holds_and_what_it_may_import(part: str) -> None:
    docstring = ast.get_docstring(ast.parse((PACKAGE / part / "__init__.py").read_text()))
    assert docstring is not None and "May import:" in docstring
    named = {module.stem for module in (PACKAGE / part).glob("*.py")} - {"__init__"}
    assert [module for module in sorted(named) if f"``{module}``" not in docstring] == []


def test_every_subpackage_is_in_the_layer_table() -> None:
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert folders == set(ALLOWED) - {"helpers"}
