"""Single-decree Paxos under every fault, over thousands of seeds.

A failure names the seed and the command that replays it.
"""

import pytest

from pyxos.sim.nemesis import parse_faults
from pyxos.sim.synod import run_synod, synod_replay_command

ALL = parse_faults("drop,dup,reorder,delay,partition,crash")


@pytest.mark.parametrize(("nodes", "seeds"), [(3, range(0, 1000)), (5, range(0, 1000))])
def test_agreement_validity_termination_under_all_faults(nodes: int, seeds: range) -> None:
    failures = []
    for seed in seeds:
        r = run_synod(seed, nodes=nodes, faults=ALL, trace=False)
        if r.violation is not None:
            replay = synod_replay_command(seed, nodes, ALL, None)
            failures.append(f"seed {seed}: {r.violation}\n  replay: {replay}")
        else:
            assert len(r.learned) == nodes, f"seed {seed}: not every node learned"
            assert len(set(r.learned.values())) == 1
    assert not failures, "\n".join(failures[:5])


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [3, 5, 7])
def test_long_sweep(nodes: int) -> None:
    for seed in range(1000, 11000):
        r = run_synod(seed, nodes=nodes, faults=ALL, trace=False)
        assert r.violation is None, synod_replay_command(seed, nodes, ALL, None)


def test_a_seed_replays_to_the_same_trace() -> None:
    a = run_synod(7, nodes=5, faults=ALL)
    b = run_synod(7, nodes=5, faults=ALL)
    assert a.trace_text() == b.trace_text()
    assert len(a.trace) > 50
    c = run_synod(8, nodes=5, faults=ALL)
    assert c.trace_text() != a.trace_text()


def test_without_faults_the_first_proposer_decides_in_one_round_per_proposer() -> None:
    r = run_synod(1, nodes=3, faults=frozenset())
    assert r.violation is None
    assert r.stats["dropped"] == 0
    assert len(set(r.learned.values())) == 1 and len(r.learned) == 3
