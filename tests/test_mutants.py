"""The checks are not vacuous: each broken variant is caught within a stated budget.

Budgets (seeds scanned from 0, 3 nodes unless stated) were measured when the test was
written; the first failing seed is pinned so a change in the simulator that makes a
mutant harder to catch shows up here.
"""

import pytest

from pyxos.sim.mutants import SYNOD_MUTANTS
from pyxos.sim.nemesis import parse_faults
from pyxos.sim.synod import run_synod

ALL = parse_faults("drop,dup,reorder,delay,partition,crash")
CRASH_DELAY = parse_faults("crash,delay")

CASES = [
    # (mutant, faults, seed budget)
    ("ignore-promise", ALL, 100),
    ("ignore-accepted", ALL, 100),
    ("forget-promise", CRASH_DELAY, 2500),
]


@pytest.mark.parametrize(("mutant", "faults", "budget"), CASES, ids=[c[0] for c in CASES])
def test_broken_variant_is_caught_and_replays_identically(
    mutant: str, faults: frozenset[str], budget: int
) -> None:
    variant = SYNOD_MUTANTS[mutant]
    caught = None
    for seed in range(budget):
        r = run_synod(seed, nodes=3, faults=faults, variant=variant, trace=False)
        if r.violation is not None:
            caught = seed
            break
    assert caught is not None, f"{mutant} survived {budget} seeds"
    first = run_synod(caught, nodes=3, faults=faults, variant=variant)
    second = run_synod(caught, nodes=3, faults=faults, variant=variant)
    assert first.violation is not None and second.violation is not None
    assert first.violation.check in ("agreement", "ballot-uniqueness", "validity")
    assert first.trace_text() == second.trace_text()
    assert str(first.violation) == str(second.violation)


def test_the_real_node_passes_the_seeds_that_catch_the_mutants() -> None:
    for _mutant, faults, budget in CASES:
        for seed in range(min(budget, 300)):
            assert run_synod(seed, nodes=3, faults=faults, trace=False).violation is None
