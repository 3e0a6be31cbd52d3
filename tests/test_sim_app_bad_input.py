"""``pyxos sim app`` refuses an application, model or workload it cannot have with a
clear error and exit code 2, never a traceback: a module that raises while importing,
a factory that raises, a factory whose product is not an application."""

from __future__ import annotations

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
