"""Messages that arrive several election timeouts late (issue 9, blind spot 3): a bug
that only such a message can trip is caught, and was not before they existed.

``latest-only-dedup`` (``sim/mutants.py``) is a session table that recognises a
repeat of a client's latest request but applies an older one again. An older request
reaches the log only when it arrives long after its client moved on. Measured when
written (3 nodes, ``--faults dup``): with the late duplicates and long holds
(``stale_messages=True``, the default) 121 of seeds 0-299 catch it, the first at seed
0; without them (the simulator before they were added) none of 0-299 does. With
``--faults all`` it is caught at seed 2 (72 of 0-299), and without them at seed 24 (6
of 0-299: a request held back by an ordinary long delay or a partition now and then).
"""

import pytest
from click.testing import CliRunner

from pyxos.cli import main
from pyxos.sim.kv import run_kv
from pyxos.sim.nemesis import parse_faults

DUP = parse_faults("dup")
MUTANT = "latest-only-dedup"
SEED = 0


def test_an_older_request_applied_again_is_caught_by_a_late_duplicate() -> None:
    a = run_kv(SEED, faults=DUP, mutant=MUTANT)
    b = run_kv(SEED, faults=DUP, mutant=MUTANT)
    assert a.violation is not None, f"{MUTANT} is no longer caught at seed {SEED}"
    assert b.violation is not None and a.violation.check == b.violation.check
    assert a.history == b.history  # (the verdict's text carries the checker's own time)
    assert a.trace_text() == b.trace_text()
    assert a.stats["stale_delayed"] > 0
    # The same seed without messages held back for several election timeouts: the
    # mutant goes unseen, and the real session table passes the seed either way.
    blind = run_kv(SEED, faults=DUP, mutant=MUTANT, stale_messages=False, trace=False)
    assert blind.violation is None
    assert run_kv(SEED, faults=DUP, trace=False).violation is None
    args = ["sim", "kv", "--seed", str(SEED), "--faults", "dup", "--mutant", MUTANT]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    assert f"--mutant {MUTANT}" in res.output


@pytest.mark.slow
def test_without_late_messages_the_mutant_survives_300_seeds() -> None:
    for seed in range(300):
        r = run_kv(seed, faults=DUP, mutant=MUTANT, stale_messages=False, trace=False)
        assert r.violation is None, f"seed {seed}: {r.violation}"
