"""``rnnpolicy.serve`` has no import cycle, type-only imports included, and the graph runner knows nothing of sessions."""

from __future__ import annotations

import ast
from pathlib import Path

SERVE = Path(__file__).resolve().parents[1] / "serve"


def _imports() -> dict[str, set[str]]:
    """serve module -> the serve modules it imports (anywhere in the file, ``if TYPE_CHECKING:`` blocks included)."""
    graph: dict[str, set[str]] = {}
    for path in SERVE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rnnpolicy.serve."):
                found.add(node.module.split(".")[2])
            elif isinstance(node, ast.ImportFrom) and node.module == "rnnpolicy.serve":
                found.update(alias.name for alias in node.names if (SERVE / f"{alias.name}.py").exists())
        graph[path.stem] = found
    return graph


def test_serve_has_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path[path.index(dep):] + [dep])}")
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_graph_runner_and_batcher_know_nothing_of_sessions():
    graph = _imports()
    for module in ("model", "batcher", "slots", "records", "store"):
        assert not graph[module] & {"directory", "sequencing", "coordinator", "servicer"}, (module, graph[module])
