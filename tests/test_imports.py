"""The architecture, checked on the source: laco's import graph (lazy imports inside functions count) has no cycle
and no edge from a lower layer to a higher one; package ``__init__`` files only re-export; no module is over 400
lines and no function over 80."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "laco"


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


# Layers from the ground up: a module may import its own layer (without a cycle) and the layers below it.
LAYERS = [
    (
        "laco.placement",
        "laco.arguments",
        "laco.functional",
        "laco.weights",
        "laco.digests",
        "laco.precision",
        "laco.packages",
        "laco.atomic",
        "laco.typed",
        "laco.overrides",
        "laco.measure",
    ),
    ("laco.compressors", "laco.cost", "laco.config"),
    ("laco.adapters",),
    ("laco.patch", "laco.hooks"),
    ("laco.mllm", "laco.loading", "laco.convert", "laco.pretrained", "laco.data", "laco.evaluate"),
    ("laco.train", "laco.bench", "laco.study", "laco.serve", "laco.harness"),
    ("laco.cli", "laco.__main__", "laco"),
]


def layer_of(module: str) -> int:
    matches = [
        (len(prefix), level)
        for level, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is in no layer; add it to LAYERS"
    return max(matches)[1]


def test_no_import_cycle():
    assert [component for component in strongly_connected(import_graph()) if len(component) > 1] == []


def test_nothing_imports_upward():
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module) and target != "laco"
    )
    assert upward == []


def test_study_cli_imports_neither_its_package_nor_laco_cli():
    assert not import_graph()["laco.study.cli"] & {"laco.study", "laco.cli"}


@pytest.mark.parametrize("init", sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("__init__.py")))
def test_init_only_reexports(init):
    tree = ast.parse((ROOT / init).read_text())
    for node in tree.body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        names = [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else []
        assert docstring or names in (["__all__"], ["__version__"]) or isinstance(node, ast.Import | ast.ImportFrom), (
            ast.dump(node)[:80]
        )


def test_no_module_over_400_lines_and_no_function_over_80():
    too_long = []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 400:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                too_long.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}"
                )
    assert too_long == []


if __name__ == "__main__":  # python tests/bench/test_imports.py: print every non-trivial component
    for component in strongly_connected(import_graph()):
        if len(component) > 1:
            print(len(component), component)
