"""``pyxos sim app`` refuses an application, model or workload it cannot have with a
clear error and exit code 2, never a traceback: a module that raises while importing,
a factory that raises, a factory whose product is not an application."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyxos.cli import main

BROKEN = """\
raise RuntimeError("module import fails")
"""

FACTORIES = """\
def raises():
    raise RuntimeError("factory boom")


def not_an_app():
    return 42
"""

WORKLOAD = "--workload=pyxos.sim.workload:counter_workload"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--app", "h10broken:X"], "importing 'h10broken' raised RuntimeError"),
        (["--app", "counter", "--model", "h10broken:m"], "RuntimeError: module import fails"),
        (["--app", "counter", "--workload", "h10broken:w"], "RuntimeError: module import fails"),
        (["--app", "h10factories:raises", "--model", "counter", WORKLOAD], "factory boom"),
        (["--app", "h10factories:not_an_app", "--model", "counter", WORKLOAD], "has no apply"),
    ],
)
def test_a_broken_module_or_factory_is_refused_cleanly(
    args: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "h10broken.py").write_text(BROKEN)
    (tmp_path / "h10factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    res = CliRunner().invoke(main, ["sim", "app", *args, "--seeds", "1"])
    assert res.exit_code == 2 and says in res.output, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    ("factory", "says"),
    [
        ("raises", "the factory raised RuntimeError: factory boom"),
        ("not_an_app", "what it made has no apply, query, snapshot, restore"),
    ],
)
def test_serve_refuses_a_factory_that_makes_no_application(
    factory: str, says: str, tmp_path: Path
) -> None:
    """Exit 2 with one clear line, before ``--init`` touches the data directory."""
    (tmp_path / "h10factories.py").write_text(FACTORIES)
    path = tmp_path / "node.toml"
    path.write_text(
        f'cluster_id = "c"\nnode_id = 1\nclient_port = 0\ndata_dir = "{tmp_path}/d"\n'
        '[peers]\n1 = "127.0.0.1:1"\n'
    )
    argv = ["--config", str(path), "--init", "--app", f"h10factories:{factory}"]
    done = subprocess.run(
        [sys.executable, "-m", "pyxos.server", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert f"configuration error: app 'h10factories:{factory}': {says}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists()
