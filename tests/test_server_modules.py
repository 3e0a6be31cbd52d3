"""The server's modules: one job each, none too long, and no import cycle among them
(not even one hidden behind ``TYPE_CHECKING`` or inside a function)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[1] / "src" / "pyxos" / "server"
MAX_LINES = 450
MODULES = sorted(p.stem for p in SERVER.glob("*.py") if p.stem != "__init__")


def _server_imports(path: Path) -> set[str]:
    """Every server module ``path`` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["pyxos", "server"] and len(parts) > 2 and parts[2] in MODULES:
                found.add(parts[2])
    return found - {path.stem}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, if any (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def test_no_server_module_is_over_the_line_limit() -> None:
    long = {
        p.name: n for p in SERVER.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by job (at most {MAX_LINES} lines): {long}"


def test_the_server_modules_import_no_cycle() -> None:
    graph = {name: _server_imports(SERVER / f"{name}.py") for name in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert "node" not in graph["http"], "the HTTP API sees the node as a NodeHandle"


def test_the_cycle_check_sees_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert "clients" in _server_imports(SERVER / "http.py")


@pytest.mark.parametrize("module", MODULES)
def test_each_server_module_imports_alone(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import pyxos.server.{module}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
