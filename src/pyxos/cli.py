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
