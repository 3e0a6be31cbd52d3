"""Power blips (fault kind ``power``): a leader that loses power at its worst moment,
and the messages a machine had in flight when its power went.

The rebuild fence (``core/replica.py``, "Rebuilding") exists for one interleaving: a
wiped leader's Accept delivered after its rebuild finished. Before ``power``, no random
sweep produced it (mutant ``rebuild-no-fence``: 0 of 600 seeds with 3 nodes, 0 of 300
with 5, ``--faults all,disk``); only the scripted schedule in
``tests/test_rebuild_fence.py`` did. The seed below is the first that catches it in a
sweep ``pyxos sim kv --faults all,disk,power --mutant rebuild-no-fence`` (3 nodes),
measured when ``power`` was added (2026-11-30).
"""

from __future__ import annotations

from click.testing import CliRunner

from pyxos.cli import main
from pyxos.core.messages import Fetch, Message
from pyxos.core.ready import Ready
from pyxos.sim.kv import run_kv
from pyxos.sim.nemesis import parse_faults
from pyxos.sim.world import NetworkFaults, Simulator

POWER = parse_faults("all,disk,power")
FENCE_SEED = 165
"""First seed (3 nodes) of the sweep above that catches ``rebuild-no-fence``."""


class _Sink:
    """A node that records what it receives."""

    def __init__(self, node_id: int, got: list[Message]) -> None:
        self.node_id = node_id
        self.got = got

    def step(self, msg: Message) -> None:
        self.got.append(msg)

    def tick(self, now: float) -> None:
        pass

    def ready(self) -> Ready:
        return Ready()

    def advance(self) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None


def _pair(faults: NetworkFaults) -> tuple[Simulator, list[Message]]:
    sim = Simulator(5, faults=faults)
    got: list[Message] = []
    sim.add_node(1, lambda i, s, r, now: _Sink(i, []))
    sim.add_node(2, lambda i, s, r, now: _Sink(i, got))
    return sim, got


def test_a_message_in_flight_when_its_sender_loses_power_may_be_held_past_its_restart() -> None:
    sim, got = _pair(NetworkFaults(crash_held=1.0, crash_held_range=(0.3, 0.3)))
    sim.send_external(1, 2, Fetch(1, 0, 1))
    assert [(d, m) for _, d, m in sim.in_flight(1)] == [(2, Fetch(1, 0, 1))]
    sim.crash(1)
    (due, _, _) = sim.in_flight(1)[0]
    assert due == 0.3
    sim.run(0.1)
    sim.restart(1)
    sim.run(0.29)
    assert got == []
    sim.run(0.31)
    assert got == [Fetch(1, 0, 1)]
    assert sim.stats["crash_held"] == 1


def test_a_message_in_flight_when_its_sender_loses_power_may_be_lost() -> None:
    sim, got = _pair(NetworkFaults(crash_lost=1.0))
    sim.send_external(1, 2, Fetch(1, 0, 1))
    sim.crash(1)
    assert sim.in_flight(1) == []
    sim.run(1.0)
    assert got == []


def test_without_power_a_crash_leaves_the_network_alone() -> None:
    sim, got = _pair(NetworkFaults())
    sim.send_external(1, 2, Fetch(1, 0, 1))
    sim.crash(1)
    sim.run(1.0)
    assert got == [Fetch(1, 0, 1)]


def test_a_sweep_with_power_blips_catches_a_peer_that_does_not_fence() -> None:
    a = run_kv(FENCE_SEED, faults=POWER, mutant="rebuild-no-fence")
    assert a.violation is not None, f"rebuild-no-fence is no longer caught at {FENCE_SEED}"
    assert a.violation.check == "agreement"
    assert any(e[1] == "power-blip" for e in a.trace)
    b = run_kv(FENCE_SEED, faults=POWER, mutant="rebuild-no-fence")
    assert b.violation is not None and str(a.violation) == str(b.violation)
    assert a.trace_text() == b.trace_text()
    # The replay command the runner prints reproduces it.
    assert a.replay.startswith("pyxos sim kv ") and "power" in a.replay
    res = CliRunner().invoke(main, a.replay.split()[1:])
    assert res.exit_code == 1, res.output
    assert "agreement" in res.output
    # The fenced protocol passes the same seed.
    assert run_kv(FENCE_SEED, faults=POWER, trace=False).violation is None
