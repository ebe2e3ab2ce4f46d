"""The package structure: no import cycles between harness's subpackages.

Every module under harness/ is parsed (not imported) and every `import` in it counts, including those
inside functions, so a cycle cannot hide behind a deferred import.
"""

from __future__ import annotations

import ast
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "harness"


def _subpackage(module: str) -> str | None:
    """`harness.model.core` -> `model`; a module directly under harness/ names itself."""
    parts = module.split(".")
    if parts[0] != "harness" or len(parts) < 2:
        return None
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(HARNESS.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(source: str, package: str) -> set[str]:
    """Absolute names of the harness modules a module of `package` imports anywhere in `source`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("harness.")}


def subpackage_graph() -> dict[str, dict[str, list[str]]]:
    """{importing subpackage: {imported subpackage: [modules where it happens]}}."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(HARNESS.rglob("*.py")):
        src = _subpackage(_module_name(path))
        if src is None:
            continue
        graph.setdefault(src, {})
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name in _imports(path.read_text(), package):
            dst = _subpackage(name)
            if dst and dst != src and (HARNESS / dst).is_dir():
                graph[src].setdefault(dst, []).append(_module_name(path))
    return graph


def find_cycle(graph: dict[str, dict]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {}, "c": {"a": []}}) is None


def test_imports_inside_functions_and_relative_imports_count():
    source = ("import os\ndef f():\n    from harness.model.core import X\n    import harness.data.reader\n"
              "class C:\n    def g(self):\n        from ..config import load\n")
    found = {_subpackage(name) for name in _imports(source, "harness.eval")}
    assert found == {"model", "data", "config"}


def test_no_cycles_between_subpackages():
    graph = subpackage_graph()
    assert {"config", "model", "data", "train", "checkpoint", "parallel", "distributed"} <= set(graph)
    cycle = find_cycle(graph)
    if cycle:
        where = "; ".join(f"{a} -> {b} in {', '.join(sorted(set(graph[a][b])))}" for a, b in zip(cycle, cycle[1:]))
        raise AssertionError(f"import cycle between harness subpackages: {' -> '.join(cycle)} ({where})")
