"""The simulator runs the real WAL on a simulated disk, so broken logs are caught.

Before the simulator ran the real storage code (it kept acceptor state in an
in-memory stand-in that failed by decree), neither variant below could even run
there: no seed could catch them. Each one's first catching seed is kept as a
regression test (it must still fail with the mutant, replay identically, and pass
with the real WAL); the scan that found it runs with ``--slow``.
"""

import random

import pytest
from click.testing import CliRunner

from pyxos.cli import main
from pyxos.sim.kv import kv_replay_command, run_kv
from pyxos.sim.mutants import WAL_MUTANTS, SkipDamagedRecordWAL
from pyxos.sim.nemesis import lose_acknowledged, parse_faults
from pyxos.sim.world import DATA_DIR
from pyxos.storage.simfs import SimFileSystem
from pyxos.storage.wal import WAL, WALCorruption

CASES = [
    # (mutant, nodes, faults, first catching seed, scan budget), measured on main with
    # the gap fence (2026-11-30). A record cut out of a log is rarely a lost vote that
    # matters: wal-skip-damaged was first caught at seed 32 before the rebuild fence
    # and the one driver, then only at 392 (1 of seeds 0-599) while the only damage
    # was the nemesis's occasional "corrupt" of a record anywhere among the newest 8.
    # Since a power loss also loses the records a lying drive acknowledged last (the
    # newest votes), at 17 (then 54 and 73 of 0-299), and at 11 since a lone chosen
    # watermark starts no fsync. wal-swallow-fsync-error moved from 4 to 13 when reads
    # under the lease stopped waiting for writes in flight, then to 95 with the
    # watermark change.
    ("wal-swallow-fsync-error", 3, "all,disk", 95, 300),
    ("wal-skip-damaged", 3, "all,disk", 11, 300),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(("mutant", "nodes", "faults", "seed", "budget"), CASES, ids=IDS)
def test_a_broken_wal_is_caught_at_its_seed_and_replays_identically(
    mutant: str, nodes: int, faults: str, seed: int, budget: int
) -> None:
    kinds = parse_faults(faults)
    wal = WAL_MUTANTS[mutant]
    a = run_kv(seed, nodes=nodes, faults=kinds, wal_class=wal)
    b = run_kv(seed, nodes=nodes, faults=kinds, wal_class=wal)
    assert a.violation is not None, f"{mutant} is no longer caught at seed {seed}"
    assert b.violation is not None
    assert a.trace_text() == b.trace_text()
    assert str(a.violation) == str(b.violation)
    good = run_kv(seed, nodes=nodes, faults=kinds, trace=False)
    assert good.violation is None, kv_replay_command(seed, nodes, 4, kinds, None)
    args = ["sim", "kv", "--seed", str(seed), "--nodes", str(nodes), "--faults", faults]
    res = CliRunner().invoke(main, [*args, "--mutant", mutant])
    assert res.exit_code == 1, res.output
    assert f"--mutant {mutant}" in res.output


@pytest.mark.slow
@pytest.mark.parametrize(("mutant", "nodes", "faults", "seed", "budget"), CASES, ids=IDS)
def test_a_broken_wal_is_caught_within_its_budget(
    mutant: str, nodes: int, faults: str, seed: int, budget: int
) -> None:
    kinds = parse_faults(faults)
    wal = WAL_MUTANTS[mutant]
    caught = next(
        (
            s
            for s in range(budget)
            if run_kv(s, nodes=nodes, faults=kinds, wal_class=wal, trace=False).violation
        ),
        None,
    )
    assert caught == seed, f"{mutant}: first caught at {caught}, not {seed}"


def test_a_drive_that_loses_acknowledged_writes_leaves_damage_the_wal_detects() -> None:
    # The nemesis's lying drive (``disk``: at a power loss, a run of the records the
    # drive acknowledged last is lost, the newest one is kept): the real WAL must
    # report corruption every time (the node then rebuilds), never a torn tail that it
    # would silently cut off; the mutant's "salvage" opens the log without them.
    for seed in range(50):
        rng = random.Random(seed)
        fs = SimFileSystem()
        fs.mkdir(DATA_DIR)
        wal, _ = WAL.open(DATA_DIR, fs=fs)
        payloads = [bytes([i]) * rng.randrange(1, 80) for i in range(1, rng.randrange(3, 20))]
        for p in payloads:
            wal.append_and_sync([(1, p)])
        wal.close()
        fs.power_loss(rng)
        lost = lose_acknowledged(fs, rng)
        assert lost.startswith("lost "), lost
        with pytest.raises(WALCorruption):
            WAL.open(DATA_DIR, fs=fs)
        salvaged, _ = SkipDamagedRecordWAL.open(DATA_DIR, fs=fs)
        kept = [r.payload for r in salvaged.replay()]
        assert kept[-1] == payloads[-1], "the newest record is kept"
        assert len(kept) < len(payloads), "acknowledged records were lost"
