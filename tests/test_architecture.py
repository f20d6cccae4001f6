"""The package's import graph, read from the source: no cycle among recall_merge modules (imports
inside functions count: a deferred import is no way around a cycle; ``if TYPE_CHECKING:`` blocks
do not), and every third-party module imported is declared in pyproject.toml."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "recall_merge"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(recall_merge modules, top-level third-party names) imported anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    internal: set[str] = set()
    external: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                _add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                # `from pkg import module` is an edge to that module; `from mod import name` to mod
                candidate = f"{target}.{alias.name}"
                _add(candidate if candidate in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    def _add(name: str) -> None:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            while name not in known and "." in name:
                name = name.rpartition(".")[0]
            if name != module:
                internal.add(name)
        else:
            external.add(name.split(".")[0])

    visit(tree)
    return internal, external


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known)[0] for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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


def test_no_import_cycle_among_package_modules():
    graph = _graph()
    assert len(graph) > 30  # the whole package was read
    cycles = _cycles(graph)
    assert cycles == [], "import cycles (deferred imports included): " + "; ".join(
        " <-> ".join(component) for component in cycles)


def test_the_cycle_check_sees_a_deferred_import():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]


# Import names that differ from their distribution's name, and what the standard library has.
_DISTRIBUTION = {"sklearn": "scikit-learn", "yaml": "pyyaml", "gguf": "gguf", "peft": "peft",
                 "safetensors": "safetensors", "pydantic": "pydantic", "sacrebleu": "sacrebleu",
                 "lm_eval": "lm-eval"}


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra, extra_requirements in project.get("optional-dependencies", {}).items():
        if extra != "test":
            requirements += extra_requirements
    names = set()
    for requirement in requirements:
        name = requirement
        for separator in "<>=!~[; ":
            name = name.split(separator)[0]
        names.add(name.strip().lower())
    return names


def test_every_third_party_import_is_declared():
    known = _modules()
    declared = _declared()
    missing = {}
    for name, path in known.items():
        for top in _imports(path, name, known)[1]:
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            distribution = _DISTRIBUTION.get(top, top).lower()
            if distribution not in declared:
                missing.setdefault(distribution, []).append(name)
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
