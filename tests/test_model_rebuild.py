"""The model checker finds the weakened rebuild rules by exhaustive search.

A rebuild exists to guarantee two things (core/replica.py, *Rebuilding*; the model's
checks ``rebuild-promise`` and ``rebuild-fence``, see ``pyxos.model.engine``):

- a node that votes again after losing its disk has promised at least every ballot of
  another node that its lost incarnations promised (that node still holds it);
- a peer that answered the rebuild query of a later incarnation accepts nothing more
  in a ballot of an earlier, lost one (the answer bounded what that ballot chose).

Agreement breaks many actions after either one breaks (31 and 19 actions in the
scripted scenarios of tests/test_model.py and tests/test_rebuild_fence.py), beyond
what breadth-first search reaches; each guarantee breaks at once, within 9 and 13
actions, in the smallest scopes that hold it. So the search finds both mutants with
shortest counterexamples, and the real code, searched to the same depth in the same
scope (every run of at most that many actions), shows no violation. The state counts
are exact, as in tests/test_model.py.
"""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyxos.cli import main
from pyxos.model.engine import Budget, explore, format_action, replay
from pyxos.model.replica import ReplicaModel

# rebuild-no-fence (the simulator's seed 165 of `pyxos sim kv --nodes 3 --faults
# all,disk,power --mutant rebuild-no-fence`): 3 replicas, node 1 may run once, one
# write, one wipe.
FENCE_SCOPE = {"nodes": 3, "proposers": 1, "timeouts": 1, "proposals": 1, "wipes": 1}


def _fence_model(mutant: str | None) -> ReplicaModel:
    s = FENCE_SCOPE
    return ReplicaModel(
        s["nodes"],
        s["proposers"],
        Budget(timeouts=s["timeouts"], proposals=s["proposals"], wipes=s["wipes"]),
        mutant=mutant,
        network="exact",
    )


def test_search_finds_the_peer_that_answers_without_fencing() -> None:
    r = explore(_fence_model("rebuild-no-fence"))
    cex = r.counterexample
    assert cex is not None
    assert cex.violation.check == "rebuild-fence"
    assert (r.states, r.depth, len(cex.actions)) == (3422, 9, 9)
    assert [format_action(a).split(":")[0] for a in cex.actions] == [
        "timeout node 1",
        "deliver PreVote 1->2",
        "deliver PreVoteReply 2->1",
        "deliver Prepare 1->2",
        "deliver Promise 2->1",
        "propose node 1",  # leader 1 accepts w1 at slot 0; its Accepts are in flight
        "wipe node 1",
        "deliver RebuildQuery 1->2",  # node 2 answers (last slot -1) ...
        "deliver Accept 1->2",  # ... then accepts the lost incarnation's late Accept
    ]
    # The counterexample replays to the same violation on a fresh model.
    steps = list(replay(_fence_model("rebuild-no-fence"), cex.actions))
    assert steps[-1][2] is not None and steps[-1][2].check == "rebuild-fence"


def test_the_real_fence_survives_every_run_of_that_depth() -> None:
    r = explore(_fence_model(None), max_depth=9)
    assert r.counterexample is None
    assert (r.states, r.transitions) == (6824, 15074)
    assert not r.complete  # bounded: every run of at most 9 actions


@pytest.mark.slow
def test_without_the_rebuild_checks_the_search_sees_nothing_at_that_depth() -> None:
    # The rebuild checks are what make the mutant visible this early: agreement alone
    # breaks only 10 actions later (tests/test_rebuild_fence.py scripts it).
    s = FENCE_SCOPE
    model = ReplicaModel(
        s["nodes"],
        s["proposers"],
        Budget(timeouts=s["timeouts"], proposals=s["proposals"], wipes=s["wipes"]),
        mutant="rebuild-no-fence",
        network="exact",
        rebuild_checks=False,
    )
    r = explore(model, max_depth=9)
    assert r.counterexample is None


def test_cli_finds_it_and_the_counterexample_replays(tmp_path: Path) -> None:
    out = tmp_path / "cex.json"
    args = ["model", "replica", "--network", "exact", "--out", str(out)]
    for k, v in FENCE_SCOPE.items():
        args += ["--slots" if k == "proposals" else f"--{k}", str(v)]
    found = CliRunner().invoke(main, [*args, "--mutant", "rebuild-no-fence"])
    assert found.exit_code == 1, found.output
    assert "states: 3422 distinct (complete)" in found.output
    assert "VIOLATION rebuild-fence: node 2 accepted slot 0 in ballot 1.1" in found.output
    assert "counterexample (9 actions):" in found.output
    again = CliRunner().invoke(main, ["model", "replay", str(out)])
    assert again.exit_code == 1, again.output
    assert "VIOLATION rebuild-fence" in again.output


@pytest.mark.parametrize("mutant", [None, "rebuild-no-fence", "rebuild-quorum"])
def test_no_rebuild_check_fires_without_a_wipe(mutant: str | None) -> None:
    # The records are kept only in scopes with wipes: the others keep their counts.
    model = ReplicaModel(3, 1, Budget(timeouts=1, proposals=1), mutant=mutant, network="exact")
    assert not model.rebuild_records
    r = explore(model, max_depth=6)
    assert r.counterexample is None


# rebuild-quorum ("finish once a quorum of peers answered"): with majorities the rule
# differs from the real one only from 5 replicas on (below, a majority of the peers is
# all of them); with flexible quorums already at 4 (q1 = 2, q2 = 3: a phase-1 quorum of
# the peers is 2 of 3). Node 1 may run once, node 4 may lose its disk.
QUORUM_SCOPE = {"nodes": 4, "q1": 2, "proposers": 1, "timeouts": 1, "wipes": 1}


def _quorum_model(mutant: str | None) -> ReplicaModel:
    return ReplicaModel(
        4,
        1,
        Budget(timeouts=1, proposals=0, wipes=1),
        mutant=mutant,
        network="exact",
        q1=2,
        wipe_nodes=(4,),
    )


def test_search_finds_the_rebuild_that_ends_on_a_quorum_of_answers(tmp_path: Path) -> None:
    r = explore(_quorum_model("rebuild-quorum"))
    cex = r.counterexample
    assert cex is not None
    assert cex.violation.check == "rebuild-promise"
    assert "node 4 votes again with promise 0.0, below ballot 1.1" in cex.violation.detail
    assert (r.states, r.depth, len(cex.actions)) == (7738, 9, 9)
    assert [format_action(a).split(":")[0] for a in cex.actions][:5] == [
        "timeout node 1",
        "deliver PreVote 1->2",
        "deliver PreVoteReply 2->1",
        "deliver Prepare 1->4",  # node 4 promises 1.1 ...
        "wipe node 4",  # ... forgets it, and rebuilds from nodes 2 and 3 alone
    ]
    # The counterexample file names the scope (quorums, which nodes may be wiped), and
    # the command line replays it on a fresh model to the same violation.
    out = tmp_path / "cex.json"
    out.write_bytes(cex.to_json())
    params = json.loads(out.read_text())["params"]
    assert (params["nodes"], params["q1"], params["wipe_nodes"]) == (4, 2, [4])
    again = CliRunner().invoke(main, ["model", "replay", str(out)])
    assert again.exit_code == 1, again.output
    assert "VIOLATION rebuild-promise" in again.output


@pytest.mark.slow  # 15,606 states: about 10 s alone, minutes on a loaded machine
def test_the_real_rebuild_survives_every_run_of_that_depth() -> None:
    r = explore(_quorum_model(None), max_depth=9)
    assert r.counterexample is None
    assert (r.states, r.transitions) == (15606, 45296)
    assert not r.complete


def test_bad_quorums_and_wipe_nodes_are_usage_errors() -> None:
    args = ["model", "replica", "--nodes", "4", "--max-depth", "1"]
    bad = CliRunner().invoke(main, [*args, "--wipes", "1", "--wipe-nodes", "9"])
    assert bad.exit_code == 2 and "wipe_nodes must lie in 1..4" in bad.output
    bad = CliRunner().invoke(main, [*args, "--wipe-nodes", "x"])
    assert bad.exit_code == 2 and "not a list of node ids" in bad.output
    bad = CliRunner().invoke(main, [*args, "--q1", "1", "--q2", "1"])
    assert bad.exit_code == 2 and "q1 + q2 must exceed" in bad.output


def test_from_a_file_the_search_starts_where_its_actions_lead(tmp_path: Path) -> None:
    # A prefix that is not enabled in the scope, or not a counterexample file at all,
    # is a usage error; a good one is the start of every path the search reports.
    cex = explore(_fence_model("rebuild-no-fence")).counterexample
    assert cex is not None
    path = tmp_path / "cex.json"
    path.write_bytes(cex.to_json())
    scope = ["--nodes", "3", "--proposers", "1", "--slots", "1", "--wipes", "1"]
    args = ["model", "replica", *scope, "--network", "exact", "--from", str(path)]
    args += ["--mutant", "rebuild-no-fence", "--out", str(tmp_path / "out.json")]
    refused = CliRunner().invoke(main, [*args, "--timeouts", "0"])
    assert refused.exit_code == 2 and "start action not enabled: timeout node 1" in refused.output
    checked = CliRunner().invoke(main, [*args, "--timeouts", "1"])
    assert checked.exit_code == 2 and "violates rebuild-fence" in checked.output
    (tmp_path / "bad.json").write_text('{"actions": [["deliver", 1]]}')
    bad = CliRunner().invoke(main, [*args[:-6], "--from", str(tmp_path / "bad.json")])
    assert bad.exit_code == 2 and "not a counterexample" in bad.output
    ok = CliRunner().invoke(main, [*args, "--timeouts", "1", "--no-rebuild-checks"])
    assert "from the state after the 9 actions" in ok.output, ok.output
    assert "no violation" in ok.output  # no budget left for a second leader


@pytest.mark.slow  # 17,634 states: about 20 s alone, minutes on a loaded machine
def test_the_fence_counterexample_carried_on_to_two_values_chosen() -> None:
    # Stage 1 (above): the shortest run that breaks rebuild-fence, 9 actions. Stage 2:
    # from its last state, with the rebuild checks off and budget for a second term,
    # the shortest run on to agreement: 11 more (node 1 rebuilds below slot 0, leads
    # again with node 3, which never saw w1, and gets w2 chosen there).
    cex = explore(_fence_model("rebuild-no-fence")).counterexample
    assert cex is not None
    model = ReplicaModel(
        3,
        1,
        Budget(timeouts=2, proposals=2, wipes=1),
        mutant="rebuild-no-fence",
        network="exact",
        rebuild_checks=False,
    )
    r = explore(model, start=cex.actions)
    full = r.counterexample
    assert full is not None and full.violation.check == "agreement"
    assert "b'w1' and b'w2' were both chosen" in full.violation.detail
    assert full.actions[:9] == cex.actions and len(full.actions) == 20
    assert r.states == 17634


def test_the_mutant_weakens_only_the_rebuild_a_bootstrap_still_waits_for_every_peer() -> None:
    # The simulator's nodes bootstrap. An earlier rebuild-quorum dropped the bootstrap
    # path: a bootstrapping node whose quorum of peers answered fresh took the rebuild
    # path, never finished bootstrapping, and the simulator saw a cluster that never
    # started (liveness at seed 0 of `pyxos sim kv --nodes 5 --faults all,disk,power`)
    # instead of the unsafe rebuild it exists for.
    import random

    from pyxos.core.ballot import ZERO
    from pyxos.core.messages import RebuildInfo
    from pyxos.core.quorum import Majority
    from pyxos.sim.mutants import REPLICA_MUTANTS

    def answers(node, peers):  # type: ignore[no-untyped-def]
        for p in peers:
            node.step(RebuildInfo(p, ZERO, -1, fresh=True, nonce=node.rebuild_nonce))
            node.ready()
            node.advance()

    cls = REPLICA_MUTANTS["rebuild-quorum"]
    boot = cls(1, Majority((1, 2, 3, 4, 5)), random.Random(1), bootstrapping=True)
    answers(boot, (2, 3, 4))
    assert boot.bootstrapping and boot.rebuilding and not boot.rebuild_caught_up
    answers(boot, (5,))
    assert not boot.bootstrapping and not boot.rebuilding  # every peer fresh: started
    # A rebuilding node, though, ends on a quorum of answers (the weakened rule).
    wiped = cls(1, Majority((1, 2, 3, 4, 5)), random.Random(1), rebuilding=True)
    answers(wiped, (2, 3, 4))
    assert wiped.rebuild_caught_up
