"""The import graph of laco.bench and laco.study: no cycles (lazy imports inside functions count), no upward
imports from the study's command line, and package ``__init__`` files that only re-export."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "laco"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every laco module ``path`` imports anywhere in its body, relative imports resolved; ``from X import y``
    counts as importing ``X.y`` where that is a module, else ``X``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in ROOT.rglob("*.py")}
    return {name: imports(path, set(paths)) for name, path in paths.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (the graph is small, but recursion depth should not matter)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


@pytest.mark.parametrize("package", ["laco.bench", "laco.study"])
def test_no_import_cycle(package):
    cycles = [
        component
        for component in strongly_connected(import_graph())
        if len(component) > 1 and any(m == package or m.startswith(package + ".") for m in component)
    ]
    assert cycles == []


def test_study_cli_imports_neither_its_package_nor_laco_cli():
    assert not import_graph()["laco.study.cli"] & {"laco.study", "laco.cli"}


@pytest.mark.parametrize("package", ["bench", "study"])
def test_init_only_reexports(package):
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    for node in tree.body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        all_names = isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [
            "__all__"
        ]
        assert docstring or all_names or isinstance(node, ast.Import | ast.ImportFrom), ast.dump(node)[:80]


if __name__ == "__main__":  # python tests/bench/test_imports.py: print every non-trivial component
    for component in strongly_connected(import_graph()):
        if len(component) > 1:
            print(len(component), component)
