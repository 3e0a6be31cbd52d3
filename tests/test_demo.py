"""``pyxos demo`` (the README's main job) runs to the end from the installed command."""

import os
import re
import subprocess
import sys
from pathlib import Path


def _server_processes(base_dir: str) -> list[str]:
    """This demo's node processes (other runs on the same machine are not counted)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if "pyxos" in line and base_dir in line]


def test_demo_fails_over_catches_up_and_leaves_no_process() -> None:
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "pyxos.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).parent,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for needle in (
        "a leader is elected",
        "SIGKILL the leader",
        "acknowledged writes are readable from the new leader",
        "has caught up",
        "demo passed",
        "processes left: 0",
    ):
        assert needle in out, f"missing {needle!r} in:\n{out}"
    found = re.search(r" in (\S*pyxos-demo-\S*)", out)
    assert found, f"the demo does not name its directory:\n{out}"
    assert _server_processes(found.group(1)) == []
