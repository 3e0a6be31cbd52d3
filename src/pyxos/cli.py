"""The ``pyxos`` command. It only builds configurations and calls the layers below."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from pyxos import __version__
from pyxos.sim.nemesis import parse_faults

if TYPE_CHECKING:
    from pyxos.sim.traceout import TraceRecorder

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
        help="Comma list of fault kinds (drop,dup,reorder,delay,partition,crash,pause,disk,"
        "power,clock,clock-unsafe,wipe-init,membership,transfer) or 'all' (the network, "
        "crash and pause kinds); membership (sim kv) adds, promotes, removes and replaces "
        "nodes; transfer asks the leader to hand over to a random node.",
    )


def _stop_on_first_option() -> Callable[[F], F]:
    return click.option(
        "--stop-on-first", is_flag=True, help="Stop the sweep at the first failing seed."
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
@click.option(
    "--trace-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the run's trace as JSON lines for `pyxos view` (of the last seed; "
    "format: docs/trace-format.md).",
)
@_stop_on_first_option()
def sim_synod(
    seeds: int,
    seed: int | None,
    first_seed: int,
    nodes: int,
    faults: frozenset[str],
    mutant: str | None,
    trace: bool,
    trace_out: str | None,
    stop_on_first: bool,
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
        recorder = _recorder("sim synod", s, nodes, faults, mutant) if trace_out else None
        r = run_synod(
            s,
            nodes=nodes,
            faults=faults,
            variant=variant,
            on_sim=recorder.attach if recorder else None,
        )
        if recorder is not None and trace_out is not None:
            recorder.finish(
                violation=r.violation, replay=synod_replay_command(s, nodes, faults, mutant)
            )
            recorder.write_file(trace_out)
        return r

    results = run_seeds(
        seed_list,
        one,
        lambda r: r.violation is not None,
        console,
        label=f"synod n={nodes}",
        stop_on_failure=stop_on_first,
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


def _service_options(fn: F) -> F:
    """The options every service simulation takes (``sim kv``, ``sim app``)."""
    options = [
        click.option("--seeds", default=100, show_default=True, help="How many seeds to run."),
        click.option("--seed", type=int, default=None, help="Run this one seed (replay)."),
        click.option("--first-seed", default=0, show_default=True, help="First seed of the range."),
        click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True),
        click.option("--clients", type=click.IntRange(1, 64), default=4, show_default=True),
        click.option(
            "--ops",
            type=click.IntRange(0),
            default=40,
            show_default=True,
            help="Operations per client.",
        ),
        click.option(
            "--snapshot-every",
            type=click.IntRange(1),
            default=25,
            show_default=True,
            help="Snapshot every this many applied slots.",
        ),
        click.option(
            "--snapshot-chunk",
            type=click.IntRange(1),
            default=1024 * 1024,
            show_default=True,
            help="Bytes per InstallSnapshot chunk (a small one sends a catch-up snapshot "
            "in many pipelined chunks through the faults).",
        ),
        _faults_option("all"),
        click.option("--mutant", default=None, help="Run a deliberately broken variant."),
        click.option(
            "--hash-seeds",
            type=click.IntRange(0, 16),
            default=2,
            show_default=True,
            help="Replay each run's chosen log in this many child processes with other "
            "PYTHONHASHSEED values and compare with the replicas (0: off).",
        ),
        click.option(
            "--history",
            "history_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Write the client history (JSON lines) of the run (of the last seed).",
        ),
        click.option("--trace", is_flag=True, help="Print the full trace of every run."),
        click.option(
            "--trace-out",
            type=click.Path(dir_okay=False),
            default=None,
            help="Write the run's trace as JSON lines for `pyxos view` (of the last seed; "
            "format: docs/trace-format.md).",
        ),
        _stop_on_first_option(),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _service_sweep(
    command: str, label: str, seed_list: list[int], run_one: Callable[[int, Any], Any]
) -> None:
    """Run a service simulation's seeds (``run_one(seed, on_sim)`` returns a
    ``pyxos.sim.service.ServiceResult``) as the command's :func:`_service_options` say,
    print the summary and each failing seed with its replay command, and exit 1 if any
    seed failed."""
    from pyxos.check.history import dump_history
    from pyxos.sim.report import percentile, run_seeds, summary_table

    params = click.get_current_context().params
    nodes: int = params["nodes"]
    clients: int = params["clients"]
    faults: frozenset[str] = params["faults"]
    mutant: str | None = params["mutant"]
    history_path: str | None = params["history_path"]
    trace: bool = params["trace"]
    trace_out: str | None = params["trace_out"]
    console = Console()

    q1, q2 = params.get("q1"), params.get("q2")

    def one(s: int) -> Any:
        recorder = _recorder(command, s, nodes, faults, mutant, q1, q2) if trace_out else None
        r = run_one(s, recorder.attach if recorder else None)
        if recorder is not None and trace_out is not None:
            recorder.finish(history=r.history, violation=r.violation, replay=r.replay)
            recorder.write_file(trace_out)
        return r

    results = run_seeds(
        seed_list,
        one,
        lambda r: r.violation is not None,
        console,
        label=label,
        stop_on_failure=params["stop_on_first"],
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
        *_quorum_rows(nodes, mutant, q1, q2),
        ("faults", ",".join(sorted(faults)) or "none"),
        ("ops ok", str(sum(r.ok for r in results))),
        ("ops failed", str(sum(r.failed for r in results))),
        ("ops unknown", str(sum(r.unknown for r in results))),
        ("elections", str(sum(r.leader_changes for r in results))),
        ("slots chosen", str(sum(r.slots for r in results))),
        ("replica digests compared", str(sum(r.audits for r in results))),
        ("replayed under other hash seeds", _replay_text(results)),
        ("messages delivered", str(sum(r.stats.get("delivered", 0) for r in results))),
        ("messages dropped", str(sum(r.stats.get("dropped", 0) for r in results))),
        ("messages held back long", str(sum(r.stats.get("stale_delayed", 0) for r in results))),
        *_stale_rows([r.stale_ballot for r in results]),
        *(_membership_rows(results) if "membership" in faults else ()),
        *(_transfer_rows(results) if faults & {"membership", "transfer"} else ()),
        ("latency p50 (sim)", f"{percentile(latencies, 0.5) * 1000:.1f} ms"),
        ("latency p99 (sim)", f"{percentile(latencies, 0.99) * 1000:.1f} ms"),
        ("violations", str(len(bad))),
    ]
    console.print(summary_table(f"pyxos {command}", rows))
    for r in bad[:10]:
        assert r.violation is not None
        console.print(f"[red]seed {r.seed}: {r.violation.check} violated[/red]")
        click.echo(r.violation.detail)
        click.echo(f"replay: {r.replay}")
    sys.exit(1 if bad else 0)


def _replay_text(results: list[Any]) -> str:
    """How many runs the cross-process determinism check replayed, and how often."""
    runs = sum(1 for r in results if r.replays)
    return f"{runs} runs, {sum(r.replays for r in results)} replays"


def _quorum_rows(
    nodes: int, mutant: str | None, q1: int | None, q2: int | None
) -> list[tuple[str, str]]:
    """The summary row of the quorum sizes a run used (``sim kv --q1/--q2``)."""
    from pyxos.core.quorum import quorum_sizes
    from pyxos.sim.mutants import QUORUM_MUTANTS

    if mutant in QUORUM_MUTANTS:
        sizes = (q1 or max(1, nodes // 2), q2 or max(1, nodes // 2))
    else:
        sizes = quorum_sizes(nodes, q1, q2)
    return [("quorums q1 / q2", f"{sizes[0]} / {sizes[1]}")]


@sim.command("kv")
@_service_options
@click.option(
    "--keys", type=click.IntRange(1), default=3, show_default=True, help="Keys the clients share."
)
@click.option(
    "--q1",
    type=click.IntRange(1),
    default=None,
    help="Phase-1 quorum size (default: majority, or the smallest that meets --q2).",
)
@click.option(
    "--q2",
    type=click.IntRange(1),
    default=None,
    help="Phase-2 quorum size (default: majority, or the smallest that meets --q1).",
)
def sim_kv(
    seeds: int,
    seed: int | None,
    first_seed: int,
    nodes: int,
    clients: int,
    ops: int,
    keys: int,
    snapshot_every: int,
    snapshot_chunk: int,
    faults: frozenset[str],
    mutant: str | None,
    hash_seeds: int,
    history_path: str | None,
    trace: bool,
    trace_out: str | None,
    stop_on_first: bool,
    q1: int | None,
    q2: int | None,
) -> None:
    """The replicated KV store: agreement, validity, replica divergence,
    linearizability, liveness and convergence."""
    from pyxos.core.quorum import quorum_sizes
    from pyxos.sim.kv import KV_MUTANTS, run_kv
    from pyxos.sim.mutants import QUORUM_MUTANTS

    if mutant is not None and mutant not in KV_MUTANTS:
        raise click.BadParameter(f"choose from {KV_MUTANTS}", param_hint="--mutant")
    if mutant not in QUORUM_MUTANTS:
        try:
            quorum_sizes(nodes, q1, q2)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--q1/--q2") from None
    seed_list = [seed] if seed is not None else list(range(first_seed, first_seed + seeds))

    def one(s: int, on_sim: Any) -> Any:
        return run_kv(
            s,
            nodes=nodes,
            clients=clients,
            ops_per_client=ops,
            keys=keys,
            snapshot_every=snapshot_every,
            snapshot_chunk=snapshot_chunk,
            faults=faults,
            mutant=mutant,
            trace=trace or len(seed_list) == 1,
            on_sim=on_sim,
            q1=q1,
            q2=q2,
            hash_seeds=hash_seeds,
        )

    _service_sweep("sim kv", f"kv n={nodes}", seed_list, one)


@sim.command("app")
@click.option(
    "--app",
    "app_spec",
    required=True,
    help="The application: counter, queue, lock or dict (pyxos.objects), or "
    "module:Factory (a class or function making an application, or a Replicated class).",
)
@click.option(
    "--model",
    default=None,
    help="The model its history is checked against: kv, counter, queue, lock or "
    "module:attr (default: the application's own).",
)
@click.option(
    "--workload",
    default=None,
    help="module:function (rng, client) -> SimOp choosing the clients' operations "
    "(default: the application's own; see pyxos.sim.workload).",
)
@_service_options
def sim_app(
    app_spec: str,
    model: str | None,
    workload: str | None,
    seeds: int,
    seed: int | None,
    first_seed: int,
    nodes: int,
    clients: int,
    ops: int,
    snapshot_every: int,
    snapshot_chunk: int,
    faults: frozenset[str],
    mutant: str | None,
    hash_seeds: int,
    history_path: str | None,
    trace: bool,
    trace_out: str | None,
    stop_on_first: bool,
) -> None:
    """Any application: agreement, validity, replica divergence, linearizability
    against its model, liveness and convergence (identical snapshot bytes)."""
    from pyxos.sim.app import ALL_APP_MUTANTS, app_variant, run_app
    from pyxos.sim.workload import resolve_app

    if mutant is not None and mutant not in ALL_APP_MUTANTS:
        raise click.BadParameter(f"choose from {ALL_APP_MUTANTS}", param_hint="--mutant")
    if "" not in sys.path:
        sys.path.insert(0, "")  # --app and --workload from the current directory
    try:
        resolved = resolve_app(app_spec, model, workload)
        app_variant(resolved, mutant)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    seed_list = [seed] if seed is not None else list(range(first_seed, first_seed + seeds))

    def one(s: int, on_sim: Any) -> Any:
        return run_app(
            s,
            app_spec,
            model=model,
            workload=workload,
            resolved=resolved,
            nodes=nodes,
            clients=clients,
            ops_per_client=ops,
            snapshot_every=snapshot_every,
            snapshot_chunk=snapshot_chunk,
            faults=faults,
            mutant=mutant,
            trace=trace or len(seed_list) == 1,
            on_sim=on_sim,
            hash_seeds=hash_seeds,
        )

    _service_sweep("sim app", f"{app_spec} n={nodes}", seed_list, one)


def _recorder(
    source: str,
    seed: int,
    nodes: int,
    faults: frozenset[str],
    mutant: str | None,
    q1: int | None = None,
    q2: int | None = None,
) -> TraceRecorder:
    """A trace recorder for one simulated seed (``--trace-out``)."""
    from pyxos.core.quorum import quorum_system
    from pyxos.sim.mutants import QUORUM_MUTANTS
    from pyxos.sim.traceout import (
        TraceRecorder,
        app_value_text,
        kv_value_text,
        plain_value_text,
    )

    ids = list(range(1, nodes + 1))
    quorum = (
        QUORUM_MUTANTS[mutant](ids, q1, q2)
        if mutant in QUORUM_MUTANTS
        else quorum_system(ids, q1, q2)
    )
    return TraceRecorder(
        source=source,
        seed=seed,
        replicas=ids,
        quorum=quorum,
        value_text={"sim kv": kv_value_text, "sim app": app_value_text}.get(
            source, plain_value_text
        ),
        meta={"faults": sorted(faults), "mutant": mutant},
    )


def _membership_rows(results: list[Any]) -> list[tuple[str, str]]:
    """Summary rows of the membership nemesis: changes made, and slots the
    governing-quorum check judged."""

    def total(key: str) -> int:
        return sum(int(r.stats.get(key, 0)) for r in results)

    runs = sum(1 for r in results if r.stats.get("membership_changes", 0))
    return [
        ("membership changes", f"{total('membership_changes')} in {runs} runs"),
        ("slots checked against their configuration", str(total("governed_slots"))),
    ]


def _transfer_rows(results: list[Any]) -> list[tuple[str, str]]:
    """Summary rows of leader transfers: the nemesis' (started, refused, handed over)
    and the handovers of leaders that removed themselves."""

    def total(key: str) -> int:
        return sum(int(r.stats.get(key, 0)) for r in results)

    return [
        (
            "leader transfers asked: started / refused / handed over",
            f"{total('transfers_started')} / {total('transfers_refused')} / "
            f"{total('transfers_done')}",
        ),
        (
            "leaders removing themselves / handed over first",
            f"{total('self_removals')} / {total('handovers_done')}",
        ),
    ]


def _stale_rows(counts: list[dict[str, int]]) -> list[tuple[str, str]]:
    """One row per message type: older-ballot messages received in total, and in how
    many runs (a sweep shows that the paths ignoring them ran)."""
    rows = []
    for name in sorted({name for c in counts for name in c}):
        total = sum(c.get(name, 0) for c in counts)
        runs = sum(1 for c in counts if c.get(name))
        rows.append((f"stale-ballot {name} received", f"{total} in {runs} runs"))
    return rows


@main.command("view")
@click.argument("traces", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port (default: any).")
@click.option("--no-open", is_flag=True, help="Do not open a browser; only print the URL.")
def view_cmd(traces: tuple[str, ...], host: str, port: int, no_open: bool) -> None:
    """Show a trace (`pyxos sim ... --trace-out FILE`, or the files of real nodes,
    `pyxos serve --trace FILE`, merged) in the browser: the message sequence diagram,
    every node's state at each moment, the logs; a failing seed opens at its violation.
    Serves a local page until Ctrl-C."""
    from pathlib import Path

    from pyxos.view.server import TraceError, make_app, run_view

    paths = [Path(t) for t in traces]
    try:
        make_app(paths)  # every check before anything is served
    except TraceError as e:
        click.echo(f"pyxos view: {e}", err=True)
        sys.exit(2)
    run_view(paths, host=host, port=port, open_browser=not no_open)


@main.command("check")
@click.argument("history", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--model",
    "model_spec",
    default="kv",
    show_default=True,
    help="The sequential specification: kv, counter, queue, lock, or module:attr "
    "(an object with init/step/parse, see pyxos.check.models).",
)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
def check_cmd(history: str, model_spec: str, timeout: float | None) -> None:
    """Check a client history (JSON lines) for linearizability against a model: exit 0
    if linearizable, 1 if not (naming the first failing key or partition and the
    operations that show it), 2 on bad input (an unknown model, a malformed line, a
    line lacking a field its operation needs, an empty history), 3 on timeout."""
    from pyxos.check.generic import run_model_check

    sys.exit(run_model_check(history, model_spec, sys.stdout, timeout_s=timeout))


# -- model checking (pyxos model) ----------------------------------------------------------

from pyxos.model.command import model as _model_commands  # noqa: E402

main.add_command(_model_commands)

# -- membership (pyxos member, pyxos cluster add-node) ----------------------------------

from pyxos.membercli import add_node as _add_node  # noqa: E402
from pyxos.membercli import member as _member_commands  # noqa: E402

main.add_command(_member_commands)


# -- the service ------------------------------------------------------------------------


@main.command("serve", context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--init", is_flag=True, help="Initialize an empty data directory (a new node).")
@click.option(
    "--join",
    default=None,
    metavar="HOST:PORT",
    help="Join a running cluster through this member's HTTP API (a new node id, added "
    "first with 'pyxos member add').",
)
@click.option(
    "--app",
    default=None,
    help="The application, module:Factory (overrides the config's app; default: the KV "
    "store). The current directory is on the import path.",
)
@click.option("--q1", type=int, default=None, help="Phase-1 quorum size (overrides the config).")
@click.option("--q2", type=int, default=None, help="Phase-2 quorum size (overrides the config).")
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write this node's side of the run to FILE (pyxos view merges the nodes' files).",
)
@click.option(
    "--trace-max-mb", type=float, default=64.0, show_default=True, help="Bound of the trace file."
)
def serve(
    config_path: str,
    init: bool,
    log_level: str,
    log_format: str,
    app: str | None,
    trace_path: str | None,
    trace_max_mb: float,
    q1: int | None,
    q2: int | None,
    join: str | None,
) -> None:
    """Run one node from a TOML config file until SIGTERM/SIGINT.

    Exit code 2 on an invalid configuration (a bad --app included) or a busy port, 1 if
    the node cannot start."""
    from pyxos.server.__main__ import main as server_main

    args = ["--config", config_path, "--log-level", log_level, "--log-format", log_format]
    if app is not None:
        args += ["--app", app]
    for name, size in (("--q1", q1), ("--q2", q2)):
        if size is not None:
            args += [name, str(size)]
    if init:
        args.append("--init")
    if join is not None:
        args += ["--join", join]
    if trace_path is not None:
        args += ["--trace", trace_path, "--trace-max-mb", str(trace_max_mb)]
    sys.exit(server_main(args))


@main.command("recover")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--force-new-cluster",
    is_flag=True,
    help="Required: make this stopped node a one-node cluster from its own state.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be done and lost; change nothing.")
@click.option(
    "--again",
    is_flag=True,
    help="Recover a node that was recovered before and has run since (its cluster lost "
    "its majority too).",
)
def recover_cmd(config_path: str, force_new_cluster: bool, dry_run: bool, again: bool) -> None:
    """When a majority is lost for good: make one STOPPED survivor a one-node cluster.

    Never automatic, and it may lose acknowledged writes: everything it keeps, re-proposes
    and may have lost is printed and recorded in the data directory (docs/recovery.md).
    Then start the node with pyxos serve and grow it again with new node ids. Exit 0
    done (or already done), 2 refused (nothing changed).
    """
    from pyxos.server.config import Config, ConfigError
    from pyxos.server.recover import RecoveryRefused
    from pyxos.server.recover import force_new_cluster as recover

    def fail(message: str) -> None:
        click.echo(f"pyxos recover: refused: {message}", err=True)
        sys.exit(2)

    if not force_new_cluster:
        fail(
            "say --force-new-cluster: the only recovery there is makes this node a new "
            "one-node cluster, and may lose acknowledged writes (docs/recovery.md)"
        )
    try:
        config = Config.load(config_path)
        outcome = recover(config, dry_run=dry_run, again=again)
    except (ConfigError, RecoveryRefused) as e:
        fail(str(e))
        return
    rec = outcome.record
    rule = "=" * 78
    say = functools.partial(click.echo, err=True)
    say(rule)
    if outcome.already:
        say(
            f"pyxos recover: node {config.node_id} was already recovered at {rec.at} "
            "and has not run since: nothing changed"
        )
    else:
        verb = "WOULD FORCE (dry run)" if dry_run else "FORCED"
        say(
            f"pyxos recover: {verb} A NEW ONE-NODE CLUSTER from node {config.node_id} "
            f"of cluster {config.cluster_id!r} ({config.data_dir})"
        )
    say(rule)
    say(
        f"snapshot slot {rec.snapshot_slot}, known chosen below {rec.known_chosen_end}, "
        f"re-proposed {rec.known_held + rec.accepted_not_known_chosen} "
        f"({rec.accepted_not_known_chosen} accepted, not known chosen), no-ops {rec.gaps}, "
        f"known chosen but lost {rec.known_not_held}; new configuration epoch {rec.epoch}"
    )
    for line in (*rec.warnings, *outcome.notes):
        say(f"WARNING: {line}")
    if outcome.written:
        say(f"recorded in {outcome.path} at {rec.at}")
    if not dry_run:
        say(
            f"next: pyxos serve --config {config_path} (a one-node cluster; grow it with "
            "new node ids: the old ones are refused for good)"
        )


@main.command("demo")
@click.option("--tls", is_flag=True, help="Run the cluster with TLS (certificates made for it).")
@click.option(
    "--web",
    is_flag=True,
    help="Show the live cluster page and wait for Enter before the failover and the end.",
)
@click.option("--no-open", is_flag=True, help="With --web: print the page's URL, open nothing.")
def demo(tls: bool, web: bool, no_open: bool) -> None:
    """Start a 3-node cluster, fail the leader over, catch a node up, shut down."""
    from pyxos.demo import run_demo

    sys.exit(run_demo(Console(), tls=tls, web=web, open_browser=not no_open))


@main.group()
def certs() -> None:
    """Certificates for TLS between nodes and clients."""


@certs.command("init")
@click.option("--dir", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--nodes", type=click.IntRange(1, 99), default=3, show_default=True)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="Another address or name for the certificates (127.0.0.1 and localhost always).",
)
def certs_init(out_dir: str, nodes: int, hosts: tuple[str, ...]) -> None:
    """Make a CA, a certificate per node and a client certificate in --dir (keys 0600)."""
    from pyxos.certs import init_certs

    made = init_certs(out_dir, nodes, hosts=hosts)
    click.echo(f"CA: {made.ca} (key {made.ca_key})")
    for node, (cert, key) in sorted(made.nodes.items()):
        click.echo(f"node {node}: tls_cert = {cert}, tls_key = {key}")
    click.echo(f"client: --cert {made.client[0]} --key {made.client[1]}")


@main.group()
def token() -> None:
    """Bearer tokens for client authentication."""


@token.command("new")
@click.option("--role", type=click.Choice(["read", "write"]), default="write", show_default=True)
def token_new(role: str) -> None:
    """Print a new token (give it to the client) and its config line (give it to nodes)."""
    from pyxos.server.auth import hash_token, new_token

    value = new_token()
    click.echo(f"token: {value}")
    click.echo(f'tokens file line: "{hash_token(value)}" = "{role}"')


@main.group()
def cluster() -> None:
    """A local cluster of real node processes on loopback (for development)."""


def _dir_option() -> Callable[[F], F]:
    return click.option(
        "--dir",
        "base_dir",
        default="pyxos-cluster",
        show_default=True,
        type=click.Path(file_okay=False),
        help="Directory holding the cluster's configs, data and logs.",
    )


@cluster.command("start")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--tls", is_flag=True, help="A new cluster runs with TLS (certificates made).")
@click.option(
    "--app",
    default=None,
    help="A new cluster's application, module:Factory, imported from the current "
    "directory (default: the KV store).",
)
@click.option(
    "--q1", type=int, default=None, help="A new cluster's phase-1 quorum size (default: majority)."
)
@click.option(
    "--q2",
    type=int,
    default=None,
    help="A new cluster's phase-2 quorum size (default: majority; q1 + q2 > nodes).",
)
@_dir_option()
def cluster_start(
    nodes: int, base_dir: str, tls: bool, app: str | None, q1: int | None, q2: int | None
) -> None:
    """Create (if new) and start a local cluster; wait for a leader."""
    import os
    from pathlib import Path

    from pyxos.localcluster import ClusterError, LocalCluster
    from pyxos.statemachine.loader import load_factory

    console = Console()
    path = Path(base_dir)
    if app is not None:
        # Checked here, with the import path the nodes will have (the current directory).
        sys.path.insert(0, os.getcwd())
        try:
            load_factory(app)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    try:
        if (path / "cluster.json").exists():
            if q1 is not None or q2 is not None:
                raise ClusterError(
                    f"{path} already holds a cluster: its quorum sizes are in its node configs"
                )
            local = LocalCluster.load(path)
        else:
            local = LocalCluster.create(path, nodes, tls=tls, app=app, q1=q1, q2=q2)
        local.start()
        leader = local.wait_for_leader(20.0)
    except ClusterError as e:
        raise click.ClickException(str(e)) from None
    _print_cluster(console, local, leader)


cluster.add_command(_add_node)


@cluster.command("stop")
@_dir_option()
def cluster_stop(base_dir: str) -> None:
    """Stop every node of a local cluster (SIGTERM, then SIGKILL after 10 s)."""
    from pathlib import Path

    from pyxos.localcluster import ClusterError, LocalCluster

    try:
        stopped = LocalCluster.load(Path(base_dir)).stop()
    except ClusterError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"stopped nodes: {', '.join(map(str, stopped)) or 'none were running'}")


@cluster.command("status")
@_dir_option()
@click.option("--token", default=None, envvar="PYXOS_TOKEN", help="Bearer token (or $PYXOS_TOKEN).")
def cluster_status(base_dir: str, token: str | None) -> None:
    """Show every node of a local cluster: pid, ports, role, leader, slots."""
    from pathlib import Path

    from pyxos.localcluster import ClusterError, LocalCluster

    try:
        local = LocalCluster.load(Path(base_dir))
    except ClusterError as e:
        raise click.ClickException(str(e)) from None
    local.token = token
    _print_cluster(Console(), local, local.leader())


def _print_cluster(console: Console, local: Any, leader: int | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"cluster {local.cluster_id} in {local.base_dir}")
    for col in ("node", "pid", "client", "http", "state", "role", "leader", "ballot", "applied"):
        table.add_column(col)
    lost: dict[str, Any] | None = None
    notes: list[str] = []
    for node_id, node in sorted(local.nodes.items()):
        st = local.node_status(node_id) or {}
        if st.get("majority_lost"):
            lost = st
        if "recovered" in st:
            notes.append(f"node {node_id} RECOVERED: {st['recovered'].get('message', '')}")
        if st.get("removed"):
            notes.append(f"node {node_id} removed: {st['removed']}")
        pid = local.pid(node_id)
        learner = node_id in (st.get("configuration") or {}).get("learners", ())
        table.add_row(
            str(node_id),
            str(pid) if pid else "-",
            node.client_address,
            node.http_url,
            str(st.get("state", "-")),
            str(st.get("role", "down")) + (" (learner)" if learner else ""),
            str(st.get("leader", "-")),
            str(st.get("ballot", "-")),
            str(st.get("applied", "-")),
        )
    console.print(table)
    if leader is not None:
        console.print(f"leader: node {leader}")
    for note in notes:
        console.print(f"[yellow]{escape(note)}[/yellow]")
    if lost is not None:
        console.print(f"[red]{lost.get('message', 'a majority lost its state')}[/red]")
        console.print(f"recovery: {lost.get('recovery', 'see README.md')}")


@main.group()
@click.option(
    "--addr",
    default=None,
    help="Comma list of client addresses host:port (default: the cluster in --dir).",
)
@_dir_option()
@click.option("--cluster", "cluster_id", default=None, help="Cluster id (default: the --dir's).")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds before 'outcome unknown'.")
@click.option("--ca", default=None, help="CA certificate to verify TLS nodes (default: --dir's).")
@click.option("--cert", default=None, help="Client certificate to present (TLS).")
@click.option("--key", default=None, help="Key of --cert.")
@click.option("--token", default=None, envvar="PYXOS_TOKEN", help="Bearer token (or $PYXOS_TOKEN).")
@click.pass_context
def kv(
    ctx: click.Context,
    addr: str | None,
    base_dir: str,
    cluster_id: str | None,
    timeout: float,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token: str | None,
) -> None:
    """Use the replicated key-value store."""
    ctx.obj = {
        "addr": addr,
        "dir": base_dir,
        "cluster": cluster_id,
        "timeout": timeout,
        "tls": {"ca": ca, "cert": cert, "key": key, "token": token},
    }


def _client(ctx: click.Context) -> Any:
    from pathlib import Path

    from pyxos.client.sync import Client
    from pyxos.localcluster import ClusterError, LocalCluster

    addr = ctx.obj["addr"]
    cluster_id = ctx.obj["cluster"]
    security = dict(ctx.obj["tls"])
    if addr:
        addresses = [a.strip() for a in addr.split(",") if a.strip()]
    else:
        try:
            local = LocalCluster.load(Path(ctx.obj["dir"]))
        except ClusterError as e:
            raise click.ClickException(f"{e}; pass --addr host:port") from None
        addresses = local.client_addresses()
        cluster_id = cluster_id or local.cluster_id
        if security["ca"] is None and local.ca_file is not None:
            security["ca"] = str(local.ca_file)
    try:
        if cluster_id:
            return Client(addresses, cluster=cluster_id, timeout=ctx.obj["timeout"], **security)
        return Client(addresses, timeout=ctx.obj["timeout"], **security)
    except (ValueError, OSError) as e:
        raise click.ClickException(f"TLS: {e}") from None


def _run_kv(ctx: click.Context, op: Callable[[Any], Any]) -> Any:
    from pyxos.client.aio import ClientError

    client = _client(ctx)
    try:
        return op(client)
    except ClientError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    finally:
        client.close()


@main.group("app")
@click.option(
    "--addr",
    default=None,
    help="Comma list of client addresses host:port (default: the cluster in --dir).",
)
@_dir_option()
@click.option("--cluster", "cluster_id", default=None, help="Cluster id (default: the --dir's).")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds before 'outcome unknown'.")
@click.option("--ca", default=None, help="CA certificate to verify TLS nodes (default: --dir's).")
@click.option("--cert", default=None, help="Client certificate to present (TLS).")
@click.option("--key", default=None, help="Key of --cert.")
@click.option("--token", default=None, envvar="PYXOS_TOKEN", help="Bearer token (or $PYXOS_TOKEN).")
@click.pass_context
def app_group(
    ctx: click.Context,
    addr: str | None,
    base_dir: str,
    cluster_id: str | None,
    timeout: float,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token: str | None,
) -> None:
    """Send opaque commands and queries to any application (pyxos serve --app)."""
    kv.callback(addr, base_dir, cluster_id, timeout, ca, cert, key, token)  # type: ignore[misc]


def _echo_bytes(data: bytes) -> None:
    try:
        click.echo(data.decode())
    except UnicodeDecodeError:
        click.echo(repr(data))


@app_group.command("command")
@click.argument("data")
@click.pass_context
def app_command(ctx: click.Context, data: str) -> None:
    """Send DATA (UTF-8) as a command through the log; print its result."""
    _echo_bytes(_run_kv(ctx, lambda c: c.command(data.encode())))


@app_group.command("query")
@click.argument("data")
@click.pass_context
def app_query(ctx: click.Context, data: str) -> None:
    """Ask DATA (UTF-8) as a read-only query (linearizable); print the answer."""
    _echo_bytes(_run_kv(ctx, lambda c: c.query(data.encode())))


@kv.command("get")
@click.argument("key")
@click.pass_context
def kv_get(ctx: click.Context, key: str) -> None:
    """Print the value of KEY (exit code 1 if it is absent)."""
    value = _run_kv(ctx, lambda c: c.get(key))
    if value is None:
        click.echo(f"{key}: not found", err=True)
        sys.exit(1)
    click.echo(value)


@kv.command("put")
@click.argument("key")
@click.argument("value")
@click.pass_context
def kv_put(ctx: click.Context, key: str, value: str) -> None:
    """Set KEY to VALUE."""
    _run_kv(ctx, lambda c: c.put(key, value))
    click.echo("OK")


@kv.command("delete")
@click.argument("key")
@click.pass_context
def kv_delete(ctx: click.Context, key: str) -> None:
    """Delete KEY; print the value it had."""
    old = _run_kv(ctx, lambda c: c.delete(key))
    click.echo("(absent)" if old is None else old)


@kv.command("cas")
@click.argument("key")
@click.argument("expected")
@click.argument("value")
@click.option("--absent", is_flag=True, help="Expect KEY to be absent (EXPECTED is ignored).")
@click.pass_context
def kv_cas(ctx: click.Context, key: str, expected: str, value: str, absent: bool) -> None:
    """Set KEY to VALUE if it currently is EXPECTED (exit code 1 if not)."""
    ok = _run_kv(ctx, lambda c: c.cas(key, None if absent else expected, value))
    click.echo("OK" if ok else "FAILED: the current value differs")
    sys.exit(0 if ok else 1)


@kv.command("list")
@click.argument("prefix", default="")
@click.option(
    "--page-size",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Entries fetched per request; every page is printed, in key order.",
)
@click.pass_context
def kv_list(ctx: click.Context, prefix: str, page_size: int) -> None:
    """Print every KEY=VALUE whose key starts with PREFIX (all pages)."""

    def walk(client: Any) -> None:
        for key, value in client.iter_list(prefix, page_size=page_size):
            click.echo(f"{key}={value}")

    _run_kv(ctx, walk)


def _http_open(
    url: str,
    *,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token: str | None,
    timeout: float = 5.0,
    data: bytes | None = None,
) -> Any:
    """GET ``url`` (POST ``data`` when given) as the CLI's HTTP client: TLS verified
    against ``ca`` (and ``cert``/``key`` presented) when given, ``token`` as a bearer
    token; a ClickException that says what went wrong (the server's own error for an
    HTTP error status) otherwise."""
    import json
    import ssl
    import urllib.error
    import urllib.request
    from pathlib import Path

    from pyxos.net.tls import TlsError, TlsFiles, client_context

    context: ssl.SSLContext | None = None
    if ca is not None:
        try:
            files = TlsFiles(Path(ca), Path(cert) if cert else None, Path(key) if key else None)
            context = client_context(files)
        except (TlsError, OSError) as e:
            raise click.ClickException(f"TLS: {e}") from None
    elif cert is not None or key is not None:
        raise click.ClickException("--cert/--key need --ca (the CA to verify the node with)")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        url, data=data, headers=headers, method="GET" if data is None else "POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read())
            detail = body.get("error") or body.get("result") or e.reason
        except (ValueError, AttributeError):
            detail = e.reason
        hint = " (pass --token, or set $PYXOS_TOKEN)" if e.code == 401 else ""
        raise click.ClickException(f"{url}: HTTP {e.code}: {detail}{hint}") from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        hint = " (a TLS node: pass --ca)" if isinstance(reason, ssl.SSLError) else ""
        raise click.ClickException(f"cannot reach {url}: {reason}{hint}") from None


def _http_security_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--ca/--cert/--key/--token`` for commands that talk to a node's HTTP API."""
    for option in reversed(
        [
            click.option("--ca", default=None, help="CA certificate to verify a TLS node (https)."),
            click.option("--cert", default=None, help="Client certificate to present (TLS)."),
            click.option("--key", default=None, help="Key of --cert."),
            click.option(
                "--token",
                default=None,
                envvar="PYXOS_TOKEN",
                help="Bearer token (or $PYXOS_TOKEN).",
            ),
        ]
    ):
        f = option(f)
    return f


@main.command("status")
@click.option("--http", "url", default=None, help="A node's HTTP address, e.g. 127.0.0.1:8101.")
@_dir_option()
@_http_security_options
def status_cmd(
    url: str | None,
    base_dir: str,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token: str | None,
) -> None:
    """Show a node's status (JSON), or every node of the local cluster in --dir.

    With --ca the node is reached over https (verified against that CA); --token is
    sent as a bearer token (a node with tokens configured answers 401 without one).
    """
    import json
    from pathlib import Path

    from pyxos.localcluster import ClusterError, LocalCluster

    if url:
        if url.startswith(("http://", "https://")):
            full = url
        else:
            full = f"{'https' if ca else 'http'}://{url}"
        status = _http_open(full.rstrip("/") + "/v1/status", ca=ca, cert=cert, key=key, token=token)
        click.echo(json.dumps(status, indent=2))
        return
    try:
        local = LocalCluster.load(Path(base_dir))
    except ClusterError as e:
        raise click.ClickException(f"{e}; pass --http host:port") from None
    local.token = token
    _print_cluster(Console(), local, local.leader())


@main.group()
def leader() -> None:
    """Leadership: hand it to another node (docs/architecture.md, *Leader transfer*)."""


@leader.command("transfer")
@click.option("--to", "target", required=True, type=click.IntRange(1), help="The new leader.")
@click.option("--http", "url", default=None, help="The leader's HTTP address (host:port).")
@_dir_option()
@_http_security_options
def leader_transfer(
    target: int,
    url: str | None,
    base_dir: str,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token: str | None,
) -> None:
    """Hand the leadership to node --to: the leader stops proposing, lets it catch up,
    and has it campaign at once; if it does not win in time the leader resumes (exit 1).

    Asks the node at --http, or the leader of the local cluster in --dir."""
    import json
    from pathlib import Path

    from pyxos.localcluster import ClusterError, LocalCluster

    if url:
        base = (
            url
            if url.startswith(("http://", "https://"))
            else f"{'https' if ca else 'http'}://{url}"
        )
    else:
        try:
            local = LocalCluster.load(Path(base_dir))
        except ClusterError as e:
            raise click.ClickException(f"{e}; pass --http host:port") from None
        local.token = token
        try:
            current = local.wait_for_leader(10.0)
        except ClusterError:
            raise click.ClickException("no leader right now: try again in a moment") from None
        if current == target:
            click.echo(f"node {target} already leads")
            return
        base = local.nodes[current].http_url
    body = json.dumps({"to": target}).encode()
    answer = _http_open(
        base.rstrip("/") + "/v1/leader/transfer",
        ca=ca,
        cert=cert,
        key=key,
        token=token,
        timeout=30.0,
        data=body,
    )
    click.echo(f"node {answer.get('leader')} leads ({answer.get('result')})")


@main.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(3, 7))
@click.option("--time", "seconds", default=60.0, show_default=True, help="Seconds of load.")
@click.option("--clients", default=6, show_default=True, type=click.IntRange(1, 256))
@click.option("--keys", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--seed", default=1, show_default=True, type=int)
@click.option(
    "--nemesis",
    default="all",
    show_default=True,
    help="all, or a comma-separated subset of kill,pause,partition,loss,delay,wipe,clock; "
    "disk-full (root) only when named, e.g. all,disk-full.",
)
@click.option(
    "--net",
    type=click.Choice(["proxy", "netns"]),
    default="proxy",
    show_default=True,
    help="Where network faults are made: fault proxies, or (root) network namespaces "
    "with iptables for partitions and loss.",
)
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where the history, report and timeline go (default: a new temporary directory).",
)
def chaos(
    nodes: int,
    seconds: float,
    clients: int,
    keys: int,
    seed: int,
    nemesis: str,
    net: str,
    out_dir: str | None,
) -> None:
    """Real node processes under a nemesis; exit 0 only if the verdict is PASS."""
    import os
    from pathlib import Path

    from pyxos.chaos.netns import netns_available
    from pyxos.chaos.run import ChaosOptions, main_sync
    from pyxos.chaos.schedule import parse_kinds

    if net == "netns" and (reason := netns_available()) is not None:
        raise click.UsageError(reason)
    try:
        kinds = parse_kinds(nemesis)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--nemesis") from None
    if "disk-full" in kinds and getattr(os, "geteuid", lambda: -1)() != 0:
        raise click.UsageError("--nemesis disk-full needs root (it mounts a tmpfs per node)")
    options = ChaosOptions(
        nodes=nodes,
        seconds=seconds,
        clients=clients,
        seed=seed,
        keys=keys,
        nemesis=kinds,
        net=net,
        out_dir=Path(out_dir) if out_dir else None,
    )
    report = main_sync(options, progress=lambda line: click.echo(line, err=True))
    click.echo(report.text())
    if not report.passed:
        raise SystemExit(1)


@main.group()
def bench() -> None:
    """Benchmarks (figures for the README's performance table)."""


@bench.command("storage")
@click.option(
    "--dir",
    "base_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where to write (default: a temporary directory on /tmp's disk).",
)
@click.option("--seconds", default=1.0, show_default=True, help="Per batch size.")
@click.option(
    "--batch", "batches", multiple=True, type=int, default=(1, 8, 64, 512), show_default=True
)
def bench_storage(base_dir: str | None, seconds: float, batches: tuple[int, ...]) -> None:
    """WAL records/s and fsyncs/s per batch size, beside the disk's raw fsync rate."""
    import tempfile
    from pathlib import Path

    from pyxos.storage.bench import format_table, run_storage_bench

    with tempfile.TemporaryDirectory(dir=base_dir) as tmp:
        rows = run_storage_bench(Path(tmp), batch_sizes=batches, seconds_per_case=seconds)
    click.echo(format_table(rows))


def _int_list(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected a comma list of numbers, not {value!r}") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("every count must be >= 1")
    return counts


@bench.command("kv")
@click.option(
    "--clients",
    default="1,64,256",
    show_default=True,
    help="Client counts (a comma list = a sweep).",
)
@click.option(
    "--connections",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="Client connections the clients share (per node for the binary API).",
)
@click.option("--value-size", default=10, show_default=True, type=click.IntRange(1))
@click.option("--read-ratio", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0))
@click.option("--duration", default=5.0, show_default=True, help="Measured seconds per run.")
@click.option("--api", type=click.Choice(["binary", "http"]), default="binary", show_default=True)
@click.option(
    "--http-loadgen",
    type=click.Choice(["auto", "wrk", "aiohttp"]),
    default="auto",
    show_default=True,
    help="--api http's load generator, the same for every system: wrk (compiled; one "
    "connection per client), aiohttp (Python; may be the limit), auto: wrk when on the "
    "PATH and --connections >= --clients.",
)
@click.option(
    "--repeat",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Interleaved runs per case (medians shown).",
)
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option("--keys", default=1000, show_default=True, type=click.IntRange(1))
@click.option(
    "--q2",
    type=click.IntRange(1),
    default=None,
    help="pyxos's phase-2 quorum size (flexible quorums; q1 the smallest legal). "
    "--vs majority runs majority quorums beside it.",
)
@click.option(
    "--vs", default="", help="Compare with: a comma list of pysyncobj,etcd,ceiling,majority."
)
@click.option(
    "--ceiling-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where the ceiling's bench.py is (default: ../shared/ceiling).",
)
@click.option(
    "--json",
    "json_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write every result, run and ratio as JSON.",
)
@click.option(
    "--plot",
    "plot_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write throughput vs p99 over the sweep as a PNG (needs matplotlib).",
)
@click.option(
    "--record",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write pyxos's history (JSON lines) for `pyxos check`; one file per run.",
)
def bench_kv(
    clients: str,
    connections: int,
    value_size: int,
    read_ratio: float,
    duration: float,
    api: str,
    http_loadgen: str,
    repeat: int,
    nodes: int,
    keys: int,
    vs: str,
    ceiling_dir: str | None,
    json_path: str | None,
    plot_path: str | None,
    record: str | None,
    q2: int | None,
) -> None:
    """Closed-loop KV load on a local cluster of real processes, fsync on, side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pyxos.bench.kv import SYSTEMS, KvOptions, run_kv
    from pyxos.bench.results import format_cases, format_ratios, plot, ratio_rows, write_json

    others = tuple(dict.fromkeys(v.strip() for v in vs.split(",") if v.strip()))
    if unknown := [v for v in others if v not in SYSTEMS]:
        raise click.BadParameter(
            f"unknown {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}", param_hint="--vs"
        )
    if duration <= 0:
        raise click.BadParameter("must be > 0", param_hint="--duration")
    if record is not None and api != "binary":
        raise click.BadParameter("--record needs --api binary", param_hint="--record")
    if q2 is not None:
        from pyxos.core.quorum import quorum_sizes

        try:
            quorum_sizes(nodes, q2=q2)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--q2") from None
    options = KvOptions(
        q2=q2,
        clients=_int_list(clients),
        connections=connections,
        value_size=value_size,
        read_ratio=read_ratio,
        duration=duration,
        api=api,
        repeat=repeat,
        nodes=nodes,
        keys=keys,
        vs=others,
        ceiling_dir=ceiling_dir,
        record=record,
        http_loadgen=http_loadgen,
    )
    err = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("measuring the disk's raw fsync rate", total=None)

        def progress(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        try:
            report = run_kv(options, progress)
        except (RuntimeError, TimeoutError, ValueError) as e:
            raise click.ClickException(f"the benchmark stopped: {e}") from None
    quorums = f", q2 = {q2} (q1 = {nodes - q2 + 1})" if q2 is not None else ""
    click.echo(
        f"pyxos bench kv: {nodes} nodes{quorums}, fsync on, {value_size} B values, "
        f"{read_ratio:.0%} reads, {connections} connections, api {api}, "
        f"{duration:g} s per run, {repeat} run(s) per case"
    )
    raw = report.raw_fsync_per_s
    click.echo(f"raw fsync rate of this disk, measured in this run: {raw:,.0f} fsyncs/s\n")
    click.echo(format_cases(report.results))
    rows = ratio_rows(report.results)
    if rows:
        click.echo(
            "\nRatios, pyxos's figure / the other's (ops/s: above 1 is better; "
            "latency and CPU: below 1 is better):\n"
        )
        click.echo(format_ratios(rows))
    for name, reason in report.unavailable.items():
        click.echo(f"\nskipped {name}: {reason}")
    for note in report.notes:
        click.echo(f"\nnote: {note}")
    if json_path:
        write_json(
            json_path,
            config=options.to_json() | {"http_loadgen": report.http_loadgen},
            results=report.results,
            runs=report.runs,
            raw_fsync_per_s=raw,
            unavailable=report.unavailable,
        )
        click.echo(f"\nwrote {json_path}")
    if plot_path:
        try:
            plot(plot_path, report.results, title=f"pyxos bench kv ({api} API, {nodes} nodes)")
        except RuntimeError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"wrote {plot_path}")


@bench.command("embedded")
@click.option("--clients", default="1,64,256", show_default=True, help="Comma list of counts.")
@click.option("--duration", default=4.0, show_default=True, help="Measured seconds per round.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1))
@click.option(
    "--vs",
    default="pysyncobj",
    show_default=True,
    help="A comma list of pysyncobj,ceiling, or '' for pyxos alone.",
)
@click.option(
    "--ceiling-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where the ceiling's bench.py is (default: ../shared/ceiling).",
)
@click.option(
    "--api",
    type=click.Choice(["submit", "await"]),
    default="submit",
    show_default=True,
    help="pyxos's load: counter.incr.submit() futures with a done-callback, or one "
    "asyncio task per client awaiting counter.incr().",
)
@click.option("--json", "json_path", default=None, help="Write every round and the medians.")
def bench_embedded(
    clients: str,
    duration: float,
    repeat: int,
    vs: str,
    ceiling_dir: str | None,
    api: str,
    json_path: str | None,
) -> None:
    """A replicated counter in 3 embedded-node processes (the load: that many
    ``counter.incr`` calls outstanding in the leader's process), fsync on, beside
    PySyncObj's own counter and the ceiling's embedded mode (as many commands
    outstanding) in the same run."""
    import json as json_module

    from pyxos.bench.embedded import SYSTEMS, format_table, run_embedded_bench
    from pyxos.bench.pysyncobj import pysyncobj_available
    from pyxos.bench.systems import ceiling_script

    try:
        counts = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError:
        raise click.BadParameter(f"not a comma list of numbers: {clients!r}") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("client counts must be at least 1")
    others = {v.strip() for v in vs.split(",") if v.strip()}
    if unknown := sorted(others - set(SYSTEMS)):
        raise click.BadParameter(
            f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}", param_hint="--vs"
        )
    with_pysyncobj = "pysyncobj" in others
    if with_pysyncobj and not pysyncobj_available():
        click.echo("PySyncObj is not importable here (pip install pysyncobj): skipped")
        with_pysyncobj = False
    ceiling = None
    if "ceiling" in others:
        ceiling = ceiling_script(ceiling_dir)
        if ceiling is None:
            where = ceiling_dir or "../shared/ceiling"
            click.echo(f"no {where}/bench.py (pass --ceiling-dir): the ceiling is skipped")
    try:
        doc = run_embedded_bench(
            counts,
            seconds=duration,
            repeat=repeat,
            vs_pysyncobj=with_pysyncobj,
            progress=lambda line: click.echo(line, err=True),
            ceiling=ceiling,
            api=api,
        )
    except (TimeoutError, RuntimeError) as e:
        raise click.ClickException(f"the benchmark stopped: {e}") from None
    click.echo(format_table(doc))
    if json_path is not None:
        with open(json_path, "w", encoding="utf-8") as f:
            json_module.dump(doc, f, indent=1)
        click.echo(f"wrote {json_path}")
    if doc["counter_below_acknowledged"]:
        raise SystemExit(1)


@bench.command("recovery")
@click.option("--keys", default=1_000_000, show_default=True, type=click.IntRange(1))
@click.option("--value-size", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(3, 9))
@click.option("--clients", default=256, show_default=True, type=click.IntRange(1))
@click.option("--connections", default=4, show_default=True, type=click.IntRange(1))
@click.option(
    "--snapshot-every",
    default=None,
    type=click.IntRange(1),
    help="Snapshot setting under test (default: the node default).",
)
@click.option(
    "--snapshot-bytes",
    default=None,
    type=click.IntRange(1),
    help="Snapshot setting under test (default: the node default).",
)
@click.option(
    "--phases",
    default="memory,wal,snapshot,threshold,rebuild",
    show_default=True,
    help="Comma list of what to measure.",
)
@click.option("--timeout", default=1800.0, show_default=True, help="Seconds any one wait may take.")
@click.option("--base-dir", default=None, help="Keep the cluster here (default: a temp dir).")
@click.option("--json", "json_path", default=None, help="Write the figures as JSON.")
def bench_recovery(
    keys: int,
    value_size: int,
    nodes: int,
    clients: int,
    connections: int,
    snapshot_every: int | None,
    snapshot_bytes: int | None,
    phases: str,
    timeout: float,
    base_dir: str | None,
    json_path: str | None,
) -> None:
    """Restart time from a WAL and from a snapshot (MB/s replayed), RSS per node, and
    the time a wiped node takes to rebuild, on a local cluster loaded with KEYS keys
    (fsync on; snapshots off while loading, so the WAL holds everything)."""
    import json as json_module
    from dataclasses import asdict
    from pathlib import Path

    from pyxos.bench.recovery import RecoveryOptions, format_report, run_recovery_bench
    from pyxos.localcluster import ClusterError

    known = {"memory", "wal", "snapshot", "threshold", "rebuild"}
    wanted = tuple(p.strip() for p in phases.split(",") if p.strip())
    if set(wanted) - known:
        raise click.BadParameter(f"unknown phase(s) {sorted(set(wanted) - known)}")
    opts = RecoveryOptions(
        keys=keys,
        value_size=value_size,
        nodes=nodes,
        clients=clients,
        connections=connections,
        snapshot_every=snapshot_every,
        snapshot_bytes=snapshot_bytes,
        phases=wanted,
        timeout=timeout,
        base_dir=Path(base_dir) if base_dir else None,
    )
    try:
        report = run_recovery_bench(opts, progress=lambda line: click.echo(line, err=True))
    except ClusterError as e:
        raise click.ClickException(f"the benchmark stopped: {e}") from None
    click.echo(format_report(report))
    if json_path is not None:
        with open(json_path, "w", encoding="utf-8") as f:
            json_module.dump(asdict(report), f, indent=1)
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    main()
