"""`pyxos view` in a real browser: headless Chromium (the distribution's package)
driven by Playwright. What is asserted is what a person sees (elements and text), not
pixels; screenshots go to tests/artifacts/ (gitignored; CI leaves them in its
checkout). The 100k-event case reports its timings and asserts none of them.

Skipped, with the reason, where Chromium or Playwright is missing (`.ci/run`
installs Chromium when it runs as root; Playwright comes with the dev extra)."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyxos.core.quorum import Majority
from pyxos.sim.kv import run_kv
from pyxos.sim.traceout import TraceRecorder, kv_value_text
from view_helpers import synthetic_trace, view_server

TRACE = Path(__file__).parent / "testdata" / "trace-kv-seed4.jsonl"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = (
    os.environ.get("PYXOS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium: apt-get install chromium (.ci/run does when root), or set "
        "PYXOS_CHROMIUM to a Chromium binary",
    ),
    pytest.mark.skipif(
        sync_playwright is None, reason="Playwright missing: pip install -e '.[dev]'"
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser: Any, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1500, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("document.body.dataset.ready", timeout=60_000)
    assert page.evaluate("document.body.dataset.ready") == "1", page.evaluate(
        "window.pyxosView.error"
    )
    page.errors = errors  # type: ignore[attr-defined]
    return page


def _card(page: Page, node: int) -> dict[str, str]:
    card = page.locator(f'.node-card[data-node="{node}"]')
    return {
        "role": card.locator(".role").inner_text().strip().lower(),
        "ballot": card.locator(".ballot").inner_text(),
        "leader": card.locator(".leader").inner_text(),
    }


def _cursor(page: Page) -> int:
    return int(page.locator("#cursor-index").inner_text())


def test_a_leader_change_step_by_step(browser: Any) -> None:
    with view_server(TRACE) as url:
        page = _open(browser, url)
        assert _cursor(page) == 0
        assert "seed 4" in page.locator("#run-info").inner_text()
        assert page.locator("#banner").is_hidden()
        assert [_card(page, n)["role"] for n in (1, 2, 3)] == ["follower"] * 3

        page.click("#next-leader")  # node 3 wins the first election
        first = _cursor(page)
        assert _card(page, 3)["role"] == "leader" and _card(page, 3)["ballot"] == "1.3"
        assert "n3 leader" in page.locator("#event-summary").inner_text()

        page.click("#next-leader")  # node 3 is cut off; node 1 takes over with 2.1
        second = _cursor(page)
        assert second > first
        assert _card(page, 1) == {"role": "leader", "ballot": "2.1", "leader": "n1"}
        assert _card(page, 3)["role"] == "leader"  # on its side of the partition
        page.screenshot(path=str(ARTIFACTS / "view-leader-change-all.png"))
        # without client traffic and heartbeats: fewer rows, the same moment
        rows = page.evaluate("window.pyxosView.rows()")
        page.click("#show-clients")
        page.click("#show-heartbeats")
        assert page.evaluate("window.pyxosView.rows()") < rows
        assert _cursor(page) == second
        page.screenshot(path=str(ARTIFACTS / "view-leader-change.png"))
        page.click("#show-clients")
        page.click("#show-heartbeats")
        assert page.evaluate("window.pyxosView.rows()") == rows

        page.keyboard.press("ArrowLeft")
        assert _cursor(page) == second - 1 and _card(page, 1)["role"] != "leader"
        page.keyboard.press("ArrowRight")
        page.click("#forward")
        assert _cursor(page) == second + 1
        page.click("#next-choice")  # the new leader's first choice
        summary = page.locator("#event-summary").inner_text()
        assert "CHOSEN slot 0 b2.1" in summary
        assert page.locator('.logs [data-row="chosen"] .cell.chosen[data-slot="0"]').count() == 1
        page.click("#prev-leader")
        assert _cursor(page) == second
        # the slider moves the cursor too
        page.locator("#slider").fill("0")
        assert _cursor(page) == 0
        assert page.errors == []  # type: ignore[attr-defined]
        page.close()


SEED = 1  # a seed at which the no-repropose mutant chooses a no-op over a chosen value
# (seed 0 until a lone chosen watermark stopped starting an fsync: test_traceout too)


def test_a_mutant_opens_at_its_violation_with_the_two_facts(browser: Any, tmp_path: Path) -> None:
    faults = frozenset({"crash", "delay", "drop", "dup", "partition", "pause", "reorder"})
    recorder = TraceRecorder(
        source="sim kv",
        seed=SEED,
        replicas=[1, 2, 3],
        quorum=Majority([1, 2, 3]),
        value_text=kv_value_text,
        meta={"faults": sorted(faults), "mutant": "no-repropose"},
    )
    r = run_kv(SEED, nodes=3, faults=faults, mutant="no-repropose", on_sim=recorder.attach)
    # What to look for on the page comes from the run's own verdict, not from a past run
    # (the seed's trajectory moves whenever the simulator changes).
    assert r.violation is not None, f"seed {SEED} no longer catches no-repropose: re-pick it"
    found = re.search(r"slot (\d+): .* in ballot (\S+) and .* in ballot (\S+)$", str(r.violation))
    assert found, str(r.violation)
    slot, first_ballot, second_ballot = found.groups()
    recorder.finish(history=r.history, violation=r.violation, replay=r.replay)
    trace = tmp_path / "violation.jsonl"
    recorder.write_file(str(trace))
    last = len(recorder.records) - 1
    with view_server(trace) as url:
        page = _open(browser, url)
        assert _cursor(page) == last  # it opens at the violation
        assert page.locator("#banner").is_visible()
        assert page.locator("#banner-check").inner_text().lower() == "agreement violated"
        banner = page.locator("#banner-detail").inner_text()
        assert f"slot {slot}" in banner
        assert f"ballot {first_ballot}" in banner and f"ballot {second_ballot}" in banner
        assert "no-op" in banner
        assert page.locator(f'.cell.conflict[data-slot="{slot}"]').count() >= 2
        assert "VIOLATION agreement" in page.locator("#event-summary").inner_text()
        page.screenshot(path=str(ARTIFACTS / "view-violation.png"))
        page.click("#first")
        assert _cursor(page) == 0
        page.click("#to-violation")
        assert _cursor(page) == last
        assert page.errors == []  # type: ignore[attr-defined]
        page.close()


def test_a_100k_event_trace_opens_and_steps(browser: Any, tmp_path: Path) -> None:
    trace = tmp_path / "big.jsonl"
    count = synthetic_trace(trace, 100_000)
    with view_server(trace) as url:
        page = _open(browser, url)
        first_render = page.evaluate("window.pyxosView.firstRenderMs")
        parse = page.evaluate("window.pyxosView.parseMs")
        prepare = page.evaluate("window.pyxosView.prepareMs")
        assert page.evaluate("window.pyxosView.records.length") == count
        page.evaluate("window.pyxosView.stepMs = []")
        for _ in range(40):
            page.keyboard.press("ArrowRight")
        assert _cursor(page) == 40
        steps = page.evaluate("window.pyxosView.stepMs")
        page.evaluate("window.pyxosView.stepMs = []")
        for k in range(1, 21):
            page.evaluate(f"window.pyxosView.seek({k * (count // 21)})")
        seeks = page.evaluate("window.pyxosView.stepMs")
        page.click("#next-leader")
        assert _card(page, 1)["role"] != "" and _cursor(page) > 20 * (count // 21)
        page.screenshot(path=str(ARTIFACTS / "view-100k.png"))
        timings = {
            "events": count,
            "first_render_ms": round(first_render),
            "fetch_and_parse_ms": round(parse),
            "derive_ms": round(prepare),
            "step_ms_median": round(statistics.median(steps), 2),
            "step_ms_max": round(max(steps), 2),
            "seek_ms_median": round(statistics.median(seeks), 2),
            "seek_ms_max": round(max(seeks), 2),
        }
        (ARTIFACTS / "view-timings.json").write_text(json.dumps(timings, indent=1) + "\n")
        print("\n100k-event trace:", timings)
        page.close()


def test_a_trace_cut_off_mid_line_shows_the_rest_and_a_bad_line_says_where(
    browser: Any, tmp_path: Path
) -> None:
    lines = TRACE.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"  # what a node killed mid-write leaves
    cut.write_text("".join(lines[:40]) + lines[40][: len(lines[40]) // 2])
    with view_server(cut) as url:
        page = _open(browser, url)  # it opens (ready == "1")
        assert page.evaluate("window.pyxosView.records.length") == 39
        assert page.evaluate("window.pyxosView.cutOff") is True
        assert page.errors == []  # type: ignore[attr-defined]
        page.close()
    bad = tmp_path / "bad.jsonl"  # damage in the middle is an error that names the line
    bad.write_text("".join(lines[:10]) + "{not json\n" + "".join(lines[10:20]))
    with view_server(bad) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.body.dataset.ready", timeout=60_000)
        assert page.evaluate("document.body.dataset.ready") == "error"
        assert "line 11 is not JSON" in page.locator("#run-info").inner_text()
        page.close()
