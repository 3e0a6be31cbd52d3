"""The dependency rule of docs/architecture.md, enforced on the import statements."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pyxos"

ALLOWED = {
    "core": {"core"},
    "statemachine": {"core", "statemachine"},
    "storage": {"core", "statemachine", "storage"},
    "check": {"core", "statemachine", "check"},
    "net": {"core", "statemachine", "net"},
    # The Ready driver: pure like the core, shared by the server and the simulator.
    "driver": {"core", "statemachine", "storage", "driver"},
    # The simulator drives the built-in replicated objects (pyxos sim app).
    "sim": {"core", "statemachine", "storage", "check", "driver", "objects", "sim"},
    # The trace viewer reads the simulator's trace format; it never touches a server.
    "view": {"core", "statemachine", "check", "sim", "view"},
    "model": {"core", "statemachine", "storage", "check", "driver", "sim", "model"},
    "server": {"core", "statemachine", "storage", "check", "driver", "net", "server"},
    "client": {"core", "statemachine", "net", "client"},
    # Replicated objects are a pure application: they import nothing else of pyxos.
    "objects": {"objects"},
    # Embedded nodes: the server runtime in the user's process, the objects it hosts,
    # and the client engine's retry rule for the calls it submits in-process.
    "embedded": {"core", "statemachine", "client", "server", "objects", "embedded"},
    "chaos": {"core", "statemachine", "check", "net", "client", "chaos"},
    # Benchmarks start node processes (localcluster) but never import server or sim.
    "bench": {"core", "statemachine", "storage", "check", "net", "client", "bench"},
}
# Modules a layer may import although their layer is not below it. The client engine
# (retries, leader discovery, the (client, seq) rule) is pure but for asyncio's sleep;
# the HTTP API, an in-process client of its own node, drives it through client.local.
SHARED = {"pyxos.client.engine": {"server"}, "pyxos.client.local": {"server"}}
CORE_FORBIDDEN = {"asyncio", "socket", "time", "random", "os", "threading", "select", "subprocess"}
PURE_LAYERS = ("core", "driver")
"""Layers with no I/O, clock, randomness or threads of their own."""


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_layers_import_only_downward() -> None:
    problems = []
    for layer, allowed in ALLOWED.items():
        for path in (SRC / layer).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                inner = parts[1] if parts[0] == "pyxos" and len(parts) > 1 else None
                if inner in ALLOWED and inner not in allowed and layer not in SHARED.get(name, ()):
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert not problems, "\n".join(problems)


def test_core_and_driver_have_no_io_clock_or_randomness() -> None:
    problems = []
    for path in (p for layer in PURE_LAYERS for p in (SRC / layer).rglob("*.py")):
        for name in _imports(path):
            if name.split(".")[0] in CORE_FORBIDDEN:
                problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert not problems, "\n".join(problems)


def test_the_rule_checker_sees_imports() -> None:
    assert "pyxos.core.ballot" in _imports(SRC / "core" / "acceptor.py")


def test_the_client_engine_needs_only_the_core() -> None:
    """What the HTTP API may import of the client layer brings no network transport
    with it."""
    problems = []
    for name in [*_imports(SRC / "client" / "engine.py"), *_imports(SRC / "client" / "local.py")]:
        parts = name.split(".")
        beyond_core = parts[0] == "pyxos" and parts[1] != "core" and name not in SHARED
        if beyond_core or parts[0] in CORE_FORBIDDEN - {"asyncio", "random", "secrets"}:
            problems.append(name)
    assert not problems, "client/engine.py or local.py imports " + ", ".join(problems)
