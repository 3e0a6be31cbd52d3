"""Traces as data (docs/trace-format.md): `--trace-out` writes a run as JSON lines."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from pyxos.cli import main
from pyxos.core.quorum import Majority
from pyxos.sim.kv import run_kv
from pyxos.sim.traceout import TRACE_VERSION, TraceRecorder, kv_value_text
from pyxos.sim.world import Simulator

TESTDATA = Path(__file__).parent / "testdata"
LEADER_CHANGE = TESTDATA / "trace-kv-seed4.jsonl"
"""`pyxos sim kv --seed 4 --clients 2 --ops 6 --trace-out ...`: node 3 leads, then node 1."""


def _record(seed: int, **kw: Any) -> tuple[TraceRecorder, Any, list[Simulator]]:
    recorder = TraceRecorder(
        source="sim kv",
        seed=seed,
        replicas=[1, 2, 3],
        quorum=Majority([1, 2, 3]),
        value_text=kv_value_text,
    )
    sims: list[Simulator] = []

    def attach(sim: Simulator) -> None:
        sims.append(sim)
        recorder.attach(sim)

    r = run_kv(seed, nodes=3, on_sim=attach, **kw)
    recorder.finish(history=r.history, violation=r.violation, replay=r.replay)
    return recorder, r, sims


def _lines(recorder: TraceRecorder) -> list[dict[str, Any]]:
    out = io.StringIO()
    recorder.write(out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_header_then_numbered_records_and_every_arrival_names_its_send() -> None:
    recorder, r, sims = _record(4, clients=2, ops_per_client=6, faults=frozenset({"drop", "dup"}))
    header, *records = _lines(recorder)
    assert header["format"] == "pyxos-trace" and header["version"] == TRACE_VERSION
    assert header["replicas"] == [1, 2, 3] and header["clients"] == [1001, 1002]
    assert header["events"] == len(records) and header["replay"] == r.replay
    assert [rec["i"] for rec in records] == list(range(len(records)))
    assert all(a["t"] <= b["t"] for a, b in itertools.pairwise(records))
    sends = {rec["m"]: rec for rec in records if rec["kind"] == "send"}
    assert len(sends) == sims[0].stats["sent"]
    arrivals = [rec for rec in records if rec["kind"] in ("recv", "drop", "lost")]
    assert arrivals and all(rec["m"] in sends for rec in arrivals)
    for rec in arrivals:
        send = sends[rec["m"]]
        assert (send["src"], send["dst"], send["msg"]["type"]) == (
            rec["src"],
            rec["dst"],
            rec["type"],
        )
        assert send["i"] < rec["i"]
    dups = [rec for rec in records if rec["kind"] == "dup"]
    assert len(dups) == sims[0].stats["duplicated"]
    kinds = {rec["kind"] for rec in records}
    assert {"state", "persist", "commit", "chosen", "timer", "call", "return"} <= kinds


def test_the_same_seed_writes_the_same_trace() -> None:
    a = _lines(_record(5, clients=2, ops_per_client=4)[0])
    b = _lines(_record(5, clients=2, ops_per_client=4)[0])
    assert a == b


def test_a_leader_change_shows_as_state_records() -> None:
    recorder, _, _ = _record(4, clients=2, ops_per_client=6, faults=frozenset({"crash"}))
    leaders = []
    role: dict[int, str] = {}
    for rec in _lines(recorder)[1:]:
        if rec["kind"] == "state":
            if rec["role"] == "leader" and role.get(rec["node"]) != "leader":
                leaders.append(rec["node"])
            role[rec["node"]] = rec["role"]
    assert len(leaders) >= 1
    assert all(rec["kind"] != "violation" for rec in _lines(recorder)[1:])


def test_a_violation_names_the_two_conflicting_facts() -> None:
    # no-repropose, seed 1 (seed 3 before the simulator ran the real WAL, then seed 0
    # until a lone chosen watermark stopped starting an fsync): slot 10 chosen twice
    # (ballot 1.1, then a no-op in 2.3).
    recorder, r, _ = _record(
        1,
        mutant="no-repropose",
        faults=frozenset({"crash", "delay", "drop", "dup", "partition", "pause", "reorder"}),
    )
    assert r.violation is not None and r.violation.check == "agreement"
    records = _lines(recorder)[1:]
    last = records[-1]
    assert last["kind"] == "violation" and last["check"] == "agreement"
    first, second = (records[i] for i in last["facts"])
    assert first["kind"] == second["kind"] == "chosen"
    assert first["slot"] == second["slot"] == 10
    assert first["value"] != second["value"]
    assert second["value"] == "no-op"


def test_cli_writes_the_trace_of_a_seed(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    res = CliRunner().invoke(
        main, ["sim", "synod", "--seed", "1", "--faults", "drop", "--trace-out", str(out)]
    )
    assert res.exit_code == 0, res.output
    header, *records = [json.loads(line) for line in out.read_text().splitlines()]
    assert header["source"] == "sim synod" and header["seed"] == 1
    assert any(rec["kind"] == "chosen" for rec in records)
    assert any(rec["kind"] == "state" and rec["role"] == "accepting" for rec in records)


def test_the_shipped_trace_is_current() -> None:
    """The viewer's tests read tests/testdata/trace-kv-seed4.jsonl; it must parse as
    this version and still show a leader change (regenerate it with the command in
    LEADER_CHANGE's docstring when the protocol changes the run)."""
    header, *records = [json.loads(x) for x in LEADER_CHANGE.read_text().splitlines()]
    assert header["version"] == TRACE_VERSION and header["events"] == len(records)
    leaders = [rec["node"] for rec in records if rec["kind"] == "state" and rec["role"] == "leader"]
    assert len(set(leaders)) >= 2


def test_recording_a_trace_does_not_change_the_run() -> None:
    # The replay command leaves --trace-out out: the recorder only reads (no RNG).
    recorded = _record(6, clients=2, ops_per_client=6, faults=frozenset({"drop", "crash"}))[1]
    plain = run_kv(6, nodes=3, clients=2, ops_per_client=6, faults=frozenset({"drop", "crash"}))
    assert recorded.history == plain.history and recorded.stats == plain.stats
