"""The ``pyxos`` command. It only builds configurations and calls the layers below."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from pyxos import __version__
from pyxos.sim.nemesis import parse_faults

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _faults_option(default: str) -> Callable[[F], F]:
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> frozenset[str]:
        try:
            return parse_faults(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    return click.option(
        "--faults",
        default=default,
        show_default=True,
        callback=parse,
        help="Comma list of fault kinds (drop,dup,reorder,delay,partition,crash,pause,disk) "
        "or 'all'.",
    )


@click.group()
@click.version_option(__version__, prog_name="pyxos")
def main() -> None:
    """pyxos: Paxos consensus for Python."""


@main.group()
def sim() -> None:
    """Deterministic simulation: run seeds under faults and check every property."""


@sim.command("synod")
@click.option("--seeds", default=100, show_default=True, help="How many seeds to run.")
@click.option("--seed", type=int, default=None, help="Run this one seed (replay).")
@click.option("--first-seed", default=0, show_default=True, help="First seed of the range.")
@click.option("--nodes", type=click.IntRange(1, 15), default=3, show_default=True)
@_faults_option("drop,dup,reorder,delay,partition,crash")
@click.option("--mutant", default=None, help="Run a deliberately broken variant.")
@click.option("--trace", is_flag=True, help="Print the full trace of every run.")
def sim_synod(
    seeds: int,
    seed: int | None,
    first_seed: int,
    nodes: int,
    faults: frozenset[str],
    mutant: str | None,
    trace: bool,
) -> None:
    """Single-decree Paxos: agreement, validity and termination under faults."""
    from pyxos.core.synod import SynodNode
    from pyxos.sim.mutants import SYNOD_MUTANTS
    from pyxos.sim.report import percentile, run_seeds, summary_table
    from pyxos.sim.synod import SynodResult, run_synod, synod_replay_command

    console = Console()
    variant: type[SynodNode] = SynodNode
    if mutant is not None:
        if mutant not in SYNOD_MUTANTS:
            raise click.BadParameter(f"choose from {sorted(SYNOD_MUTANTS)}", param_hint="--mutant")
        variant = SYNOD_MUTANTS[mutant]
    seed_list = [seed] if seed is not None else list(range(first_seed, first_seed + seeds))

    def one(s: int) -> SynodResult:
        return run_synod(s, nodes=nodes, faults=faults, variant=variant)

    results = run_seeds(
        seed_list, one, lambda r: r.violation is not None, console, label=f"synod n={nodes}"
    )
    bad = [r for r in results if r.violation is not None]
    for r in results:
        if trace:
            click.echo(f"seed {r.seed} trace")
            click.echo(r.trace_text())
    rounds = [float(r.rounds) for r in results if r.decided_at is not None]
    rows = [
        ("seeds run", str(len(results))),
        ("nodes", str(nodes)),
        ("faults", ",".join(sorted(faults)) or "none"),
        ("messages delivered", str(sum(r.stats.get("delivered", 0) for r in results))),
        ("messages dropped", str(sum(r.stats.get("dropped", 0) for r in results))),
        ("messages duplicated", str(sum(r.stats.get("duplicated", 0) for r in results))),
        ("rounds to decide p50", f"{percentile(rounds, 0.5):.0f}"),
        ("rounds to decide p99", f"{percentile(rounds, 0.99):.0f}"),
        ("violations", str(len(bad))),
    ]
    console.print(summary_table("pyxos sim synod", rows))
    for r in bad[:10]:
        assert r.violation is not None
        console.print(
            f"[red]seed {r.seed}: {r.violation.check} violated[/red]: {r.violation.detail}"
        )
        if not trace:
            click.echo(r.trace_text(limit=40))
        click.echo(f"replay: {synod_replay_command(r.seed, nodes, faults, mutant)}")
    sys.exit(1 if bad else 0)


@sim.command("kv")
@click.option("--seeds", default=100, show_default=True, help="How many seeds to run.")
@click.option("--seed", type=int, default=None, help="Run this one seed (replay).")
@click.option("--first-seed", default=0, show_default=True, help="First seed of the range.")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--clients", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--ops", default=40, show_default=True, help="Operations per client.")
@_faults_option("all")
@click.option("--mutant", default=None, help="Run a deliberately broken variant.")
@click.option(
    "--history",
    "history_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the client history (JSON lines) of the run (of the last seed).",
)
@click.option("--trace", is_flag=True, help="Print the full trace of every run.")
def sim_kv(
    seeds: int,
    seed: int | None,
    first_seed: int,
    nodes: int,
    clients: int,
    ops: int,
    faults: frozenset[str],
    mutant: str | None,
    history_path: str | None,
    trace: bool,
) -> None:
    """The replicated KV store: agreement, validity, linearizability, liveness."""
    from pyxos.check.history import dump_history
    from pyxos.core.replica import Replica
    from pyxos.sim.kv import KVResult, kv_replay_command, run_kv
    from pyxos.sim.mutants import REPLICA_MUTANTS, STORE_MUTANTS
    from pyxos.sim.report import percentile, run_seeds, summary_table
    from pyxos.statemachine.kv import KVStore

    console = Console()
    replica_factory: type[Replica] = Replica
    store_factory: type[KVStore] = KVStore
    early_ack = mutant == "early-ack"
    if mutant is not None and not early_ack:
        if mutant in REPLICA_MUTANTS:
            replica_factory = REPLICA_MUTANTS[mutant]
        elif mutant in STORE_MUTANTS:
            store_factory = STORE_MUTANTS[mutant]
        else:
            names = sorted([*REPLICA_MUTANTS, *STORE_MUTANTS, "early-ack"])
            raise click.BadParameter(f"choose from {names}", param_hint="--mutant")
    seed_list = [seed] if seed is not None else list(range(first_seed, first_seed + seeds))

    def one(s: int) -> KVResult:
        return run_kv(
            s,
            nodes=nodes,
            clients=clients,
            ops_per_client=ops,
            faults=faults,
            replica_factory=replica_factory,
            store_factory=store_factory,
            ack_before_sync=early_ack,
            trace=trace or len(seed_list) == 1,
        )

    results = run_seeds(
        seed_list, one, lambda r: r.violation is not None, console, label=f"kv n={nodes}"
    )
    if history_path is not None and results:
        dump_history(results[-1].history, history_path)
    if trace:
        for r in results:
            click.echo(f"seed {r.seed} trace")
            click.echo(r.trace_text())
    bad = [r for r in results if r.violation is not None]
    latencies = [lat for r in results for lat in r.latencies]
    rows = [
        ("seeds run", str(len(results))),
        ("nodes / clients", f"{nodes} / {clients}"),
        ("faults", ",".join(sorted(faults)) or "none"),
        ("ops ok", str(sum(r.ok for r in results))),
        ("ops failed", str(sum(r.failed for r in results))),
        ("ops unknown", str(sum(r.unknown for r in results))),
        ("elections", str(sum(r.leader_changes for r in results))),
        ("slots chosen", str(sum(r.slots for r in results))),
        ("messages delivered", str(sum(r.stats.get("delivered", 0) for r in results))),
        ("messages dropped", str(sum(r.stats.get("dropped", 0) for r in results))),
        ("latency p50 (sim)", f"{percentile(latencies, 0.5) * 1000:.1f} ms"),
        ("latency p99 (sim)", f"{percentile(latencies, 0.99) * 1000:.1f} ms"),
        ("violations", str(len(bad))),
    ]
    console.print(summary_table("pyxos sim kv", rows))
    for r in bad[:10]:
        assert r.violation is not None
        console.print(f"[red]seed {r.seed}: {r.violation.check} violated[/red]")
        click.echo(r.violation.detail)
        click.echo(f"replay: {kv_replay_command(r.seed, nodes, clients, faults, mutant)}")
    sys.exit(1 if bad else 0)


@main.command("check")
@click.argument("history", type=click.Path(exists=True, dir_okay=False))
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
def check_cmd(history: str, timeout: float | None) -> None:
    """Check a client history (JSON lines) for linearizability: exit 0 if linearizable,
    1 if not (naming the first failing key and the smallest window), 2 on bad input."""
    from pyxos.check.linearizability import run_check

    sys.exit(run_check(history, sys.stdout, timeout_s=timeout))
