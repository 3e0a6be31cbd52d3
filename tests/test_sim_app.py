"""``pyxos sim app``: any application under every fault, its history judged against its
model, its replicas' states and snapshot bytes compared; the broken applications the
checks must catch, each replaying from its seed.

CI runs a few seeds per application; the sweeps of 300 seeds are behind ``--slow``.
"""

from __future__ import annotations

import itertools
import json
import random
import shlex
from hashlib import blake2b
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyxos.check.history import AppOperation
from pyxos.cli import main
from pyxos.objects import Counter
from pyxos.sim.app import ALL_APP_MUTANTS, AppResult, run_app
from pyxos.sim.mutants import WallClockApp
from pyxos.sim.nemesis import parse_faults
from pyxos.sim.workload import SimOp, WorkloadClient, resolve_app
from pyxos.statemachine.base import Application

DISK = parse_faults("all,disk")
EXAMPLE = [
    "--app",
    "examples.counter:Counter",
    "--model",
    "counter",
    "--workload",
    "examples.counter_workload:workload",
]
ROOT = Path(__file__).resolve().parent.parent


def _sweep(app: str, nodes: int, seeds: range, **kw: object) -> None:
    failures = []
    for seed in seeds:
        r = run_app(seed, app, nodes=nodes, faults=DISK, trace=False, **kw)  # type: ignore[arg-type]
        if r.violation is not None:
            failures.append(f"seed {seed}: {r.violation}\n  replay: {r.replay}")
        else:
            assert r.ok > 0 and r.slots > 0 and r.audits > 0, f"seed {seed} did nothing"
    assert not failures, "\n".join(failures[:3])


@pytest.mark.parametrize("app", ["counter", "queue", "lock", "dict"])
@pytest.mark.parametrize("nodes", [3, 5])
def test_the_built_in_objects_under_every_fault(app: str, nodes: int) -> None:
    _sweep(app, nodes, range(6 if nodes == 3 else 3))


@pytest.mark.slow
@pytest.mark.parametrize("app", ["counter", "queue", "lock"])
@pytest.mark.parametrize("nodes", [3, 5])
def test_long_sweep(app: str, nodes: int) -> None:
    _sweep(app, nodes, range(300))


def test_the_example_counter_written_outside_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/counter.py with its workload (examples/counter_workload.py), through the
    command line as the README shows it."""
    monkeypatch.chdir(ROOT)
    res = CliRunner().invoke(main, ["sim", "app", *EXAMPLE, "--seeds", "3", "--faults", "all,disk"])
    assert res.exit_code == 0, res.output
    assert "violations" in res.output and "seeds run" in res.output


def test_an_object_class_by_its_import_path_runs_as_its_short_name() -> None:
    a = run_app(4, "pyxos.objects:Queue", faults=DISK, trace=False)
    b = run_app(4, "queue", faults=DISK, trace=False)
    assert a.violation is None and a.history == b.history
    assert {op.op for op in a.history} == {"enqueue", "dequeue", "peek", "len"}


# -- the mutants: caught, and replayed from the printed command -------------------------------

APP_MUTANT_CASES = [
    # (app, mutant, which check must catch it, seed budget); first catches when written:
    # wall-clock at seed 0, no-fence at seed 0, double-apply at seed 0, set-order at
    # seed 0 (tests/test_sim_app_determinism.py has more of it).
    ("counter", "wall-clock", "divergence", 20),
    ("queue", "set-order", "determinism", 20),
    (EXAMPLE, "wall-clock", "divergence", 20),
    ("lock", "no-fence", "linearizability", 20),
    ("queue", "double-apply", "linearizability", 30),
]


def _app_kw(app: str | list[str]) -> dict[str, str]:
    if isinstance(app, str):
        return {"app": app}
    opts = dict(zip(app[::2], app[1::2], strict=True))
    return {"app": opts["--app"], "model": opts["--model"], "workload": opts["--workload"]}


@pytest.mark.parametrize(
    ("app", "mutant", "check", "budget"),
    APP_MUTANT_CASES,
    ids=[f"{m}-{a if isinstance(a, str) else 'example'}" for a, m, _, _ in APP_MUTANT_CASES],
)
def test_a_broken_application_is_caught_and_replays_from_its_seed(
    app: str | list[str],
    mutant: str,
    check: str,
    budget: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    kw = _app_kw(app)
    caught: AppResult | None = None
    for seed in range(budget):
        r = run_app(seed, faults=DISK, trace=False, mutant=mutant, **kw)  # type: ignore[arg-type]
        if r.violation is not None:
            caught = r
            break
    assert caught is not None, f"{mutant} survived {budget} seeds"
    assert caught.violation is not None and caught.violation.check == check, caught.violation
    # The printed command replays it: the same verdict and the same history.
    argv = shlex.split(caught.replay)
    assert argv[:3] == ["pyxos", "sim", "app"] and f"--mutant {mutant}" in caught.replay
    path = tmp_path / "replayed.jsonl"
    res = CliRunner().invoke(main, [*argv[1:], "--history", str(path)])
    assert res.exit_code == 1, res.output
    assert f"seed {caught.seed}: {check} violated" in res.output
    assert caught.violation.detail in res.output
    assert f"replay: {caught.replay}" in res.output
    lines = path.read_text().splitlines()
    assert [AppOperation(**_renamed(json.loads(line))) for line in lines] == caught.history


def _renamed(doc: dict[str, object]) -> dict[str, object]:
    doc["return_"] = doc.pop("return")
    return doc


def test_the_mutants_pass_nothing_on_the_real_applications() -> None:
    """The mutants' targets are sound: the same seeds without the mutant pass."""
    assert run_app(0, "lock", faults=DISK, trace=False).violation is None
    assert run_app(0, "counter", faults=DISK, trace=False).violation is None


def test_the_convergence_check_compares_snapshot_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """An application whose digest is the same on every replica (it digests only the
    counter) but whose snapshot carries each replica's clock: the per-slot digests
    agree, the final snapshot bytes do not."""
    made = itertools.count(1)

    class DigestBlindStamp(WallClockApp):
        def state_digest(self) -> int:
            return int.from_bytes(blake2b(self.app.snapshot(), digest_size=8).digest(), "little")

    def factory() -> Application:
        return DigestBlindStamp(CounterApp(), clock_offset=1000.0 * next(made))

    factory.sim_model = "counter"  # type: ignore[attr-defined]
    factory.sim_workload = _counter_workload  # type: ignore[attr-defined]
    monkeypatch.setattr("test_sim_app.STAMPED", factory, raising=False)
    r = run_app(1, "test_sim_app:STAMPED", faults=DISK, trace=False)
    assert r.violation is not None and r.violation.check == "convergence", r.violation
    assert "snapshot() bytes differ" in r.violation.detail
    assert r.audits > 0  # the per-slot divergence check ran and saw nothing


class CounterApp:
    """A counter application of a few lines (commands: a decimal to add)."""

    def __init__(self) -> None:
        self.n = 0

    def apply(self, command: bytes) -> bytes:
        self.n += int(command)
        return b"%d" % self.n

    def query(self, q: bytes) -> bytes:
        return b"%d" % self.n

    def snapshot(self) -> bytes:
        return b"%d" % self.n

    def restore(self, data: bytes) -> None:
        self.n = int(data)


def _counter_workload(rng: random.Random, client: WorkloadClient) -> SimOp:
    if rng.random() < 0.3:
        return SimOp("get", None, b"get", int, query=True)
    n = rng.randint(-2, 4)
    return SimOp("add", n, b"%d" % n, int)


CounterApp.sim_model = "counter"  # type: ignore[attr-defined]
CounterApp.sim_workload = staticmethod(_counter_workload)  # type: ignore[attr-defined]


def test_an_application_may_carry_its_own_model_and_workload() -> None:
    r = run_app(2, "test_sim_app:CounterApp", faults=DISK, trace=False)
    assert r.violation is None, r.violation
    assert r.replay.startswith("pyxos sim app --app test_sim_app:CounterApp --seed 2 ")


# -- what the command line says -----------------------------------------------------------------


def test_the_history_is_what_pyxos_check_reads(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "lock.jsonl"
    args = ["sim", "app", "--app", "lock", "--seed", "3", "--history", str(path)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) >= {"client", "op", "input", "call", "return", "ok"}
    assert runner.invoke(main, ["check", str(path), "--model", "lock"]).exit_code == 0


def test_the_trace_file_carries_the_operations_inputs(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    args = ["sim", "app", "--app", "counter", "--seed", "1", "--trace-out", str(path)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0]["source"] == "sim app"
    calls = [r for r in records if r.get("kind") == "call"]
    assert calls and all("input" in r and "key" not in r for r in calls)
    commits = [r for r in records if r.get("kind") == "commit" and r["entries"]]
    assert any("counter.incr(" in e[2] for r in commits for e in r["entries"])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--app", "nope:Nope"], "cannot import module 'nope'"),
        (["--app", "abacus"], "expected one of counter, queue, lock, dict"),
        (["--app", "examples.counter:Counter"], "no model to check its history against"),
        (["--app", "examples.counter:Counter", "--model", "counter"], "no workload"),
        (["--app", "counter", "--mutant", "no-fence"], "mutant 'no-fence' is a lock's"),
        (["--app", "counter", "--mutant", "nope"], "choose from"),
        (["--app", "counter", "--model", "abacus"], "unknown model 'abacus'"),
    ],
)
def test_the_command_line_refuses_what_it_cannot_run(
    args: list[str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    res = CliRunner().invoke(main, ["sim", "app", *args, "--seeds", "1"])
    assert res.exit_code == 2 and says in res.output, res.output
    assert "Traceback" not in res.output


def test_every_mutant_name_is_known_to_the_command_line() -> None:
    assert {"wall-clock", "set-order", "no-fence", "double-apply", "no-repropose"} <= set(
        ALL_APP_MUTANTS
    )
    assert resolve_app("lock").model.name == "lock"
    assert resolve_app("pyxos.objects:ReplicatedDict").model.name == "kv"
    assert resolve_app("pyxos.objects:Counter").object_class is Counter
