"""The library's shape: no import cycle between its modules (imports inside functions included) and
no function longer than 80 lines, each exception listed with its reason."""
from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "idd_lib"
MAX_FUNCTION_LINES = 80

# Known exceptions, each to be removed by the change that fixes it.
# Known exceptions, each with its reason (none today).
ALLOWED_CYCLES: dict[frozenset[str], str] = {}
LONG_FUNCTIONS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The library modules ``path`` imports at run time (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(block)}
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
    return (found & modules) - {name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in LIBRARY.rglob("*.py")}
    return {name: _imported_modules(path, set(paths)) for name, path in paths.items()}


def import_cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The modules of each cycle (strongly connected component of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = set()

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.add(frozenset(component))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle_between_library_modules():
    assert import_cycles(import_graph()) - set(ALLOWED_CYCLES) == set()


def test_the_cycle_check_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}


def test_no_function_over_80_lines():
    long = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(LIBRARY.parent).as_posix()}::{node.name}"] = lines
    assert set(long) - set(LONG_FUNCTIONS) == set(), long
