"""The ``pyxos model`` command: exhaustive small scopes, and replay of counterexamples.

Theory of operation
-------------------
``pyxos model synod|replica`` builds a scope from its options and explores it
breadth first (``--search bfs``, the default: exact state counts, shortest
counterexamples) or by seeded random walks (``--search random``: for scopes too deep
for breadth-first search; counterexamples are shrunk to one-minimal). A violation is
printed as a numbered list of actions and written to a JSON file that
``pyxos model replay FILE`` runs again, action by action, through the same driver,
printing what every action did to the node it touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

__all__ = ["build_model", "model"]


def build_model(scope: str, params: dict[str, Any]) -> Any:
    """The model a counterexample file (or the command line) describes."""
    from pyxos.model.engine import Budget
    from pyxos.model.replica import ReplicaModel
    from pyxos.model.synod import SynodModel

    budget = Budget(
        drops=params.get("drops", 0),
        dups=params.get("dups", 0),
        crashes=params.get("crashes", 0),
        wipes=params.get("wipes", 0),
        timeouts=params.get("timeouts", 1),
        proposals=params.get("proposals", 0),
        reads=params.get("reads", 0),
    )
    kw = {
        "mutant": params.get("mutant"),
        "symmetry": params.get("symmetry", True),
        "network": params.get("network", "duplicating"),
        "rebuild_checks": params.get("rebuild_checks", True),
        "q1": params.get("q1"),
        "q2": params.get("q2"),
        "wipe_nodes": _node_list(params.get("wipe_nodes")),
    }
    if scope == "synod":
        return SynodModel(params.get("nodes", 3), params.get("proposers", 2), budget, **kw)
    if scope == "replica":
        return ReplicaModel(params.get("nodes", 3), params.get("proposers", 2), budget, **kw)
    raise click.BadParameter(f"unknown scope {scope!r}")


def _node_list(raw: Any) -> tuple[int, ...] | None:
    """``--wipe-nodes 2,3`` (or a list, as a counterexample file has it)."""
    if not raw:
        return None
    try:
        if isinstance(raw, str):
            return tuple(int(x) for x in raw.split(","))
        return tuple(int(x) for x in raw)
    except (TypeError, ValueError):
        raise click.BadParameter(f"not a list of node ids: {raw!r}") from None


@click.group("model")
def model() -> None:
    """Model checking: every interleaving of small scopes, on the real core objects."""


def _scope_options(f: Any) -> Any:
    options = [
        click.option("--nodes", type=click.IntRange(1, 7), default=3, show_default=True),
        click.option(
            "--proposers",
            type=click.IntRange(1, 7),
            default=2,
            show_default=True,
            help="Nodes 1..P have timers (propose, run for leader).",
        ),
        click.option("--timeouts", default=1, show_default=True, help="Timer firings, in all."),
        click.option("--crashes", default=0, show_default=True),
        click.option(
            "--drops",
            default=0,
            show_default=True,
            help="(--network exact) Losses; subsumption prunes each (a message never "
            "delivered does the same) unless --no-subsumption.",
        ),
        click.option("--dups", default=0, show_default=True, help="(--network exact)"),
        click.option(
            "--network",
            type=click.Choice(["duplicating", "exact"]),
            default="duplicating",
            show_default=True,
            help="duplicating: messages stay deliverable (unbounded duplication and "
            "loss); exact: a multiset, loss and duplication budgeted.",
        ),
        click.option("--mutant", default=None, help="Check a deliberately broken variant."),
        click.option("--max-states", type=int, default=None, help="Stop after K states."),
        click.option("--max-depth", type=int, default=None, help="Every state within D actions."),
        click.option(
            "--q1",
            type=click.IntRange(1),
            default=None,
            help="Phase-1 quorum size (default: majority, or the smallest that meets --q2).",
        ),
        click.option(
            "--q2",
            type=click.IntRange(1),
            default=None,
            help="Phase-2 quorum size (default: majority, or the smallest that meets --q1).",
        ),
        click.option("--no-symmetry", is_flag=True, help="No value-symmetry reduction."),
        click.option(
            "--no-rebuild-checks",
            is_flag=True,
            help="Check agreement, validity and linearizability only, not also the rebuild "
            "rule's own guarantees (rebuild-promise, rebuild-fence) in scopes with wipes.",
        ),
        click.option(
            "--no-subsumption",
            is_flag=True,
            help="Keep successors their predecessor subsumes (lost messages, ignored "
            "deliveries); the same verdicts, more states.",
        ),
        click.option(
            "--search",
            type=click.Choice(["bfs", "random"]),
            default="bfs",
            show_default=True,
        ),
        click.option(
            "--from",
            "from_file",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="(--search bfs) Search from the state a counterexample file's actions "
            "lead to in this scope: carry a rebuild-check counterexample on to agreement "
            "(with --no-rebuild-checks and the budgets the rest needs).",
        ),
        click.option("--walks", default=1000, show_default=True, help="(--search random)"),
        click.option("--seed", default=0, show_default=True, help="(--search random)"),
        click.option(
            "--out",
            type=click.Path(dir_okay=False),
            default=None,
            help="Where to write a counterexample (default pyxos-model-SCOPE.json).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@model.command("synod")
@_scope_options
@click.option("--proposals", default=0, show_default=True, help="Further proposals, any node.")
def model_synod(**opts: Any) -> None:
    """Basic Paxos: agreement and validity over every interleaving of a small scope."""
    _run("synod", opts)


@model.command("replica")
@_scope_options
@click.option("--slots", "proposals", default=2, show_default=True, help="Client writes.")
@click.option("--reads", default=0, show_default=True, help="Client reads.")
@click.option("--wipes", default=0, show_default=True, help="Crashes that lose the disk.")
@click.option(
    "--wipe-nodes",
    default=None,
    help="Comma list of the nodes that may lose their disk (default: every node).",
)
def model_replica(**opts: Any) -> None:
    """Multi-Paxos: agreement, validity and linearizability of a register."""
    _run("replica", opts)


def _run(scope: str, opts: dict[str, Any]) -> None:
    from pyxos.model.engine import explore, format_action, random_walks

    params = {
        k: opts.get(k, 0)
        for k in (
            "nodes",
            "proposers",
            "drops",
            "dups",
            "crashes",
            "wipes",
            "timeouts",
            "proposals",
            "reads",
            "mutant",
            "network",
            "q1",
            "q2",
            "wipe_nodes",
        )
    }
    params["symmetry"] = not opts["no_symmetry"]
    params["rebuild_checks"] = not opts["no_rebuild_checks"]
    try:
        m = build_model(scope, params)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    shown = " ".join(f"{k}={v}" for k, v in m.params().items() if v not in (None, 0, False))
    click.echo(f"pyxos model {scope}: {shown}")
    if opts["search"] == "bfs":

        def progress(states: int, transitions: int, depth: int) -> None:
            click.echo(f"  depth {depth}: {states} states, {transitions} transitions", err=True)

        start = None
        if opts["from_file"]:
            from pyxos.model.engine import action_from_json

            try:
                raw = json.loads(Path(opts["from_file"]).read_text())
                start = [action_from_json(a) for a in raw["actions"]]
            except (ValueError, KeyError, TypeError, IndexError, msgspec.DecodeError) as e:
                raise click.UsageError(f"{opts['from_file']}: not a counterexample: {e}") from None
            click.echo(f"from the state after the {len(start)} actions of {opts['from_file']}")
        try:
            r = explore(
                m,
                max_states=opts["max_states"],
                max_depth=opts["max_depth"],
                progress=progress,
                subsumption=not opts["no_subsumption"],
                start=start,
            )
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        bound = "complete" if r.complete else "bounded"
        if opts["max_depth"] is not None and r.counterexample is None:
            bound += f" to depth {opts['max_depth']}"
        click.echo(
            f"states: {r.states} distinct ({bound}), transitions: {r.transitions}, "
            f"subsumed: {r.subsumed}, depth: {r.depth}, time: {r.seconds:.2f} s"
        )
        cex = r.counterexample
    else:
        w = random_walks(m, walks=opts["walks"], seed=opts["seed"])
        click.echo(f"random walks: {w.walks}, steps: {w.steps}, time: {w.seconds:.2f} s")
        if w.counterexample is not None:
            click.echo(
                f"found in walk {w.found_at_walk} after {w.unshrunk_length} actions; "
                f"shrunk to {len(w.counterexample.actions)}"
            )
        cex = w.counterexample
    if cex is None:
        click.echo("no violation")
        sys.exit(0)
    click.secho(f"VIOLATION {cex.violation.check}: {cex.violation.detail}", fg="red")
    click.echo(f"counterexample ({len(cex.actions)} actions):")
    for n, a in enumerate(cex.actions, 1):
        click.echo(f"  {n:3}. {format_action(a)}")
    out = Path(opts["out"] or f"pyxos-model-{scope}.json")
    out.write_bytes(cex.to_json())
    click.echo(f"replay: pyxos model replay {out}")
    sys.exit(1)


@model.command("replay")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def model_replay(path: str) -> None:
    """Run a counterexample again, action by action; exit 1 if it still violates."""
    from pyxos.model.engine import action_from_json, describe_node, format_action, replay

    try:
        doc = json.loads(Path(path).read_text())
        actions = [action_from_json(a) for a in doc["actions"]]
        m = build_model(doc["scope"], doc["params"])
    except (ValueError, KeyError, TypeError, IndexError) as e:
        click.echo(f"{path}: not a counterexample file: {e}", err=True)
        sys.exit(2)
    click.echo(f"replaying {len(actions)} actions, scope {doc['scope']} {doc['params']}")
    violation = None
    for n, (a, w, v) in enumerate(replay(m, actions), 1):
        target = a[1]
        click.echo(f"{n:3}. {format_action(a)}")
        if v is not None:
            violation = v
            break
        click.echo(f"       node {target}: {describe_node(w.procs[target].node)}")
    if violation is None:
        click.echo("no violation: the counterexample does not reproduce")
        sys.exit(0)
    click.secho(f"VIOLATION {violation.check}: {violation.detail}", fg="red")
    sys.exit(1)
