"""The packages' layers, read from the source (ast), nothing imported:

- `mm_excitor/` (the library) imports none of `data/`, `eval/`, `tasks/`, `bench/`;
- `data/` imports none of `tasks/`, `eval/`, `bench/`;
- `eval/` (scorers) imports neither `tasks/` nor `bench/`;
- no import cycle among the project's modules (these packages, `bench/`, `experiments/` and the `train_*.py`
  entry points).

The layer rules count every import, wherever it stands. The cycle check counts only the imports that run when a
module is imported: those at module level, outside `if TYPE_CHECKING:`; an import inside a function (deferred on
purpose, e.g. to keep torch out of a scoring command) or under `if TYPE_CHECKING:` is ignored there.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mm_excitor", "data", "eval", "tasks", "bench", "experiments")
FORBIDDEN = {
    "mm_excitor": {"data", "eval", "tasks", "bench"},
    "data": {"tasks", "eval", "bench"},
    "eval": {"tasks", "bench"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    files += sorted(ROOT.glob("train_*.py"))
    return {module_name(path): path for path in sorted(files)}


MODULES = project_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported project module, whether it runs at import time) for every import statement of the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[:len(base) - node.level + 1]
        return ".".join([*base, *([node.module] if node.module else [])])

    def visit(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            at_import = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, at_import)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, at_import) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = resolve(node)
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                submodule = f"{module}.{alias.name}"
                found.append((submodule if submodule in MODULES else module, at_import))
        for child in ast.iter_child_nodes(node):
            visit(child, at_import)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return [(target, at_import) for target, at_import in found if target.split(".")[0] in {*PACKAGES, *MODULES}]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_never_imports_the_layers_above_it(layer):
    violations = [f"{name} imports {target}" for name, path in MODULES.items() if name.split(".")[0] == layer
                  for target, _ in imports(name, path) if target.split(".")[0] in FORBIDDEN[layer]]
    assert violations == []


def import_time_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports at import time (a package's `__init__` counts as its own node)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {target for target, at_import in imports(name, path) if at_import and target in MODULES
                       and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles_at_import_time():
    assert cycles(import_time_graph()) == []


def test_the_cycle_finder_finds_a_cycle_and_the_graph_sees_the_packages():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_time_graph()
    assert "tasks.base" in graph["tasks.run"] and "tasks.run" in graph["tasks.generate"]
    assert "mm_excitor.train.checkpoints" in graph["mm_excitor.train.trainer"]  # `from . import checkpoints`
