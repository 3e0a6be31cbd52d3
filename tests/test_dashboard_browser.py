"""The live cluster page (`GET /` of a node's HTTP port) in a real browser, during
`pyxos demo --web`: the page shows the leader, then the new leader once the demo kills
it. Headless Chromium from the distribution, driven by Playwright; skipped with the
reason where either is missing. The screenshot goes to tests/artifacts/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_view_browser import CHROMIUM, pytestmark, sync_playwright

ARTIFACTS = Path(__file__).parent / "artifacts"
__all__ = ["pytestmark"]


def _line(proc: subprocess.Popen[str], pattern: str, deadline: float) -> re.Match[str]:
    assert proc.stdout is not None
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"no line matching {pattern!r} in the demo's output:\n{''.join(seen)}")


def test_the_live_page_sees_the_leader_change_during_the_demo() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyxos.cli", "demo", "--web", "--no-open"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdin is not None
    try:
        deadline = time.monotonic() + 120
        first = int(_line(proc, r"node (\d+) leads", deadline).group(1))
        url = _line(proc, r"(http://\S+)", deadline).group(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            # every member's stream is up and the page names the leader the demo saw
            page.wait_for_function(
                "document.querySelectorAll('.member:not(.down)').length === 3",
                timeout=30_000,
            )
            page.wait_for_function(
                f"document.getElementById('leader').textContent === 'n{first}'", timeout=30_000
            )
            assert page.locator(f'.member[data-node="{first}"] .role').inner_text() == "LEADER"
            proc.stdin.write("\n")  # kill the leader
            proc.stdin.flush()
            second = int(_line(proc, r"node (\d+) leads after", deadline).group(1))
            assert second != first
            page.wait_for_function(
                f"document.getElementById('leader').textContent === 'n{second}'",
                timeout=30_000,
            )
            page.wait_for_function(
                "document.querySelectorAll('#elections li').length >= 2", timeout=30_000
            )
            items = page.locator("#elections li").all_inner_texts()
            assert f"n{second} leads" in items[0] and f"after n{first}" in items[0]
            _line(proc, r"has caught up", deadline)
            page.wait_for_function(
                "document.querySelectorAll('.member:not(.down)').length === 3", timeout=30_000
            )
            page.screenshot(path=str(ARTIFACTS / "dashboard-after-failover.png"))
            browser.close()
        proc.stdin.write("\n")  # stop the cluster
        proc.stdin.flush()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


if CHROMIUM is None or sync_playwright is None:  # pragma: no cover
    pytest.skip("no Chromium or Playwright (see test_view_browser.py)", allow_module_level=True)
