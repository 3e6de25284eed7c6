"""The layout's promises, checked on the source: no import circle, layers that import only downward, no long
functions, and the guide's module paths still there."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SOURCE / "agentic"
MAX_FUNCTION_LINES = 60
# Each layer may import only the layers after it (errors is imported by all). The application (ideas) sits on
# the server core (api), which knows nothing of it: only the composition roots put the two together. The web
# console is a front end like the CLI: it uses the application and the server, and neither of them knows it.
LAYERS = [("cli", "console"), ("ideas", "doctor"), ("api",), ("ml",), ("cost",), ("config",),
          ("registry", "checks", "logs", "data", "settings_io"), ("errors",)]
COMPOSITION_ROOTS = {"agentic.cli", "agentic.api.app"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The agentic modules a `from ... import ...` at module level loads."""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if not base.startswith("agentic"):
        return []
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, in functions too (a deferred import still ties two modules), but not the ones
    under `if TYPE_CHECKING:` (never run)."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _import_graph() -> dict[str, set[str]]:
    """Module -> the agentic modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                targets.update(name for name in _resolve(module, path, node) if name in modules)
            else:
                targets.update(alias.name for alias in node.names if alias.name in modules)
        graph[module] = targets - {module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _packages_imported_by(module: str, graph: dict[str, set[str]]) -> set[str]:
    """Top-level parts of agentic (ml, api, config...) that `module` imports, packages' own __init__ aside."""
    return {target.split(".")[1] for target in graph[module] if target.count(".") >= 1} - {module.split(".")[1]}


def test_no_import_circle() -> None:
    cycle = _cycle(_import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_layers_import_downward_only() -> None:
    graph = _import_graph()
    rank = {part: index for index, layer in enumerate(LAYERS) for part in layer}
    wrong = []
    for module in graph:
        if module == "agentic" or module in COMPOSITION_ROOTS:
            continue
        own = rank[module.split(".")[1]]
        wrong += [f"{module} imports {part}" for part in _packages_imported_by(module, graph) if rank[part] <= own]
    assert not wrong, wrong


def test_no_function_over_sixty_lines() -> None:
    long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert not long, long


@pytest.mark.parametrize("module, names", [
    ("agentic.ml.model_factory", ["create_model_manager"]),
    ("agentic.ml.model_manager", ["ModelManager"]),
    ("agentic.ml.openai_model_manager", ["OpenAIModelManager"]),
    ("agentic.ml.gpu_model_manager", ["GPUModelManager"]),
    ("agentic.api.app", ["create_app"]),
])
def test_guide_module_paths_still_import(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    assert all(hasattr(imported, name) for name in names)
