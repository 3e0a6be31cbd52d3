"""PySyncObj beside pyxos: the same closed-loop KV load on 3 processes on loopback.

Theory of operation
-------------------
PySyncObj (Raft, pure Python; ``pip install pysyncobj`` into the venv, not a pyxos
dependency) replicates a Python object: here ``KVStore``, a dict whose ``set`` and
``get`` are both ``@replicated``, so a get goes through the log as pyxos's does. Each of
the 3 nodes is a separate process (``python -m pyxos.bench.pysyncobj node ...``) started with
``start_new_session`` and driven over its stdin / stdout, one JSON object a line.

PySyncObj has no client protocol: a replicated method is called on a ``SyncObj`` object
inside a node process. So the load runs inside one node's process (the leader by
default, ``--load-on follower`` for a node that forwards every command to the leader
over TCP, which is nearer to pyxos's separate client process). Two load shapes:

- ``callbacks`` (default): ``clients`` logical clients, each a chain of calls with
  ``callback=``; a command's callback (on PySyncObj's tick thread) records the latency
  and issues that client's next command. One command outstanding per client, no thread
  per client: the most PySyncObj's API allows.
- ``threads``: one thread per client calling ``set/get(..., sync=True)`` in a loop.

The measurement matches ``pyxos.benchmark``: a 0.5 s warm-up excluded, then commands
completing within ``--seconds`` counted, latency ``time.perf_counter`` per command.

Durability: PySyncObj does NOT fsync. Its default journal is in memory; even its file
journal (``journalFile``) is an mmap that is not msync'd on the commit path. pyxos
fsyncs on every node before a command is acknowledged. The table says so.

Every node process is killed at exit: SIGTERM, then SIGKILL after 2 s, in a ``finally``
(and ``atexit``), and a node exits by itself when its stdin closes.

``run_pysyncobj`` is the case ``pyxos bench kv --vs pysyncobj`` runs: the same, as a
``CaseResult`` with p99.9 (from a ``Histogram`` kept in the node process) and the CPU
time of the three node processes over the bench request (the load generator included,
since it runs inside the leader: PySyncObj's own method), scaled to the window.

Run: ``pyxos bench kv --vs pysyncobj``, or the standalone driver
``python -m pyxos.bench.pysyncobj --clients 1,16,64 --seconds 5 --with-pyxos``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from pyxos.bench.histogram import Histogram
from pyxos.bench.loadgen import cpu_seconds
from pyxos.bench.results import CaseResult
from pyxos.benchmark import (
    WARMUP_SECONDS,
    BenchResult,
    LatencySummary,
    bench_local_cluster,
    format_results,
    median_result,
)
from pyxos.localcluster import free_ports

NO_FSYNC_NOTE = "PySyncObj does not fsync (in-memory journal)"

# -- inside a node process ------------------------------------------------------------


def _node_main(self_addr: str, conf: dict[str, Any], partners: list[str]) -> None:
    """Run one PySyncObj node; answer ``status`` and ``bench`` requests on stdin."""
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class KVStore(SyncObj):  # type: ignore[misc]
        """A replicated dict: both ``set`` and ``get`` go through the Raft log."""

        def __init__(self) -> None:
            super().__init__(self_addr, partners, SyncObjConf(**conf))
            self._data: dict[str, str] = {}

        @replicated  # type: ignore[untyped-decorator]
        def set(self, key: str, value: str) -> None:
            self._data[key] = value

        @replicated  # type: ignore[untyped-decorator]
        def get(self, key: str) -> str | None:
            return self._data.get(key)

    workload = conf.pop("workload", "kv")
    kv: Any
    if workload == "counter":
        # PySyncObj's own counter (pysyncobj.batteries.ReplCounter), ``inc`` replicated.
        from pysyncobj.batteries import ReplCounter

        kv = ReplCounter()
        sync = SyncObj(self_addr, partners, SyncObjConf(**conf), consumers=[kv])
    else:
        kv = sync = KVStore()
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "status":
            reply: dict[str, Any] = {"leader": bool(sync._isLeader()), "ready": sync.isReady()}
        elif request["cmd"] == "bench":
            reply = _load(kv, **request["load"])
        else:
            reply = {"error": f"unknown command {request['cmd']!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    os._exit(0)  # stdin closed: the orchestrator is gone; SyncObj threads must not linger


def _load(
    kv: Any,
    *,
    mode: str,
    clients: int,
    seconds: float,
    write_ratio: float,
    value_bytes: int,
    keys: int,
    seed: int,
    workload: str = "kv",
) -> dict[str, Any]:
    """Run the closed-loop load on the local ``kv`` (``workload="counter"``: ``inc``
    on the counter, every command a write); latencies and counters."""
    import random

    from pysyncobj import FAIL_REASON

    clock = time.perf_counter
    start = clock()
    measure_from = start + WARMUP_SECONDS
    end = measure_from + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def command(rng: random.Random, index: int, n: int) -> tuple[str, tuple[str, ...]]:
        if workload == "counter":
            return "inc", ()
        key = f"k{rng.randrange(keys)}"
        if rng.random() < write_ratio:
            return "set", (key, f"{index}.{n}.".ljust(value_bytes, "x"))
        return "get", (key,)

    if mode == "callbacks":
        outstanding = [clients]
        all_done = threading.Event()

        def chain(index: int) -> None:
            rng = random.Random(seed * 1_000_003 + index)
            n = 0
            started = 0.0

            def issue() -> None:
                nonlocal n, started
                n += 1
                method, args = command(rng, index, n)
                started = clock()
                getattr(kv, method)(*args, callback=on_done)

            def on_done(_result: object, error: int) -> None:
                done = clock()
                with lock:
                    if error != FAIL_REASON.SUCCESS:
                        errors[0] += 1
                    elif measure_from <= done <= end:
                        latencies.append(done - started)
                    if done >= end:
                        outstanding[0] -= 1
                        if outstanding[0] == 0:
                            all_done.set()
                        return
                issue()

            issue()

        for i in range(clients):
            chain(i)
        all_done.wait(seconds + WARMUP_SECONDS + 30)
    elif mode == "threads":

        def worker(index: int) -> None:
            rng = random.Random(seed * 1_000_003 + index)
            n = 0
            while True:
                started = clock()
                if started >= end:
                    return
                n += 1
                method, args = command(rng, index, n)
                try:
                    getattr(kv, method)(*args, sync=True, timeout=5.0)
                except Exception:  # SyncObjException: timeout, queue full, no leader
                    with lock:
                        errors[0] += 1
                    continue
                done = clock()
                if measure_from <= done <= end:
                    with lock:
                        latencies.append(done - started)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + WARMUP_SECONDS + 30)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    with lock:
        return {"ops": len(latencies), **Histogram(latencies).summary_ms(), "errors": errors[0]}


# -- the orchestrator -----------------------------------------------------------------


class _Node:
    """One PySyncObj node process, spoken to one JSON line at a time."""

    def __init__(self, self_addr: str, conf: dict[str, Any], partners: list[str]) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyxos.bench.pysyncobj",
                "node",
                self_addr,
                json.dumps(conf),
                *partners,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``request``, wait up to ``timeout`` s for the reply line."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"node pid {self.proc.pid} did not answer {request['cmd']}")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node pid {self.proc.pid} exited")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def kill(self) -> None:
        """SIGTERM the node's process group, SIGKILL it after 2 s; reap it."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5.0)


_live: list[_Node] = []


def _kill_all() -> None:
    while _live:
        _live.pop().kill()


atexit.register(_kill_all)


def _run_nodes(
    clients: int,
    *,
    seconds: float,
    write_ratio: float,
    value_bytes: int,
    keys: int,
    mode: str,
    load_on: str,
    append_entries_period: float,
    batch: bool,
    tick_period: float,
    seed: int,
    workload: str = "kv",
) -> tuple[dict[str, Any], float]:
    """Start 3 nodes, run the load in one, stop them: its reply and the nodes' CPU s."""
    conf: dict[str, Any] = {
        "workload": workload,
        "dynamicMembershipChange": False,
        "appendEntriesPeriod": append_entries_period,
        "appendEntriesUseBatch": batch,
        "autoTickPeriod": tick_period,
    }
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    nodes = [_Node(a, conf, [b for b in addrs if b != a]) for a in addrs]
    _live.extend(nodes)
    try:
        deadline = time.monotonic() + 20.0
        chosen: _Node | None = None
        while chosen is None:
            if time.monotonic() > deadline:
                raise TimeoutError("PySyncObj elected no leader within 20 s")
            statuses = [n.ask({"cmd": "status"}, 5.0) for n in nodes]
            leaders = [i for i, s in enumerate(statuses) if s["leader"]]
            if len(leaders) == 1 and all(s["ready"] for s in statuses):
                i = leaders[0] if load_on == "leader" else (leaders[0] + 1) % 3
                chosen = nodes[i]
            else:
                time.sleep(0.05)
        load = {
            "mode": mode,
            "clients": clients,
            "seconds": seconds,
            "write_ratio": write_ratio,
            "value_bytes": value_bytes,
            "keys": keys,
            "seed": seed,
            "workload": workload,
        }
        pids = [n.proc.pid for n in nodes]
        cpu_before = cpu_seconds(pids)
        reply = chosen.ask({"cmd": "bench", "load": load}, seconds + WARMUP_SECONDS + 60)
        cpu = (cpu_seconds(pids) - cpu_before) * seconds / (seconds + WARMUP_SECONDS)
    finally:
        for n in nodes:
            n.kill()
            _live.remove(n)
    return reply, cpu


def bench_pysyncobj(
    clients: int,
    *,
    seconds: float,
    write_ratio: float,
    value_bytes: int,
    keys: int,
    mode: str = "callbacks",
    load_on: str = "leader",
    append_entries_period: float = 0.1,
    batch: bool = True,
    tick_period: float = 0.05,
    seed: int = 0,
) -> BenchResult:
    """Start 3 PySyncObj nodes, run the load in one of them, stop them all.

    ``append_entries_period`` and ``batch`` are PySyncObj's ``appendEntriesPeriod``
    and ``appendEntriesUseBatch`` (its defaults: 0.1 s, True). With batching on, new
    entries leave the leader only every ``append_entries_period``: that period is
    then the floor of every command's latency, or rather the next ``tick_period``
    (``autoTickPeriod``, default 0.05 s: how long its poll waits) after it.
    """
    reply, _cpu = _run_nodes(
        clients,
        seconds=seconds,
        write_ratio=write_ratio,
        value_bytes=value_bytes,
        keys=keys,
        mode=mode,
        load_on=load_on,
        append_entries_period=append_entries_period,
        batch=batch,
        tick_period=tick_period,
        seed=seed,
    )
    return BenchResult(
        system=(
            f"PySyncObj ({mode}, load in {load_on}, "
            f"{'batch every' if batch else 'no batch, period'} "
            f"{append_entries_period * 1000:g} ms, "
            f"tick {tick_period * 1000:g} ms)"
        ),
        nodes=3,
        clients=clients,
        connections=0,
        seconds=seconds,
        write_ratio=write_ratio,
        value_bytes=value_bytes,
        keys=keys,
        ops=reply["ops"],
        ops_per_s=reply["ops"] / seconds,
        latency=LatencySummary(reply["p50_ms"], reply["p90_ms"], reply["p99_ms"], reply["max_ms"]),
        errors=reply["errors"],
        unknown=0,
        note=NO_FSYNC_NOTE,
    )


def run_pysyncobj(
    clients: int, *, seconds: float, read_ratio: float, value_size: int, keys: int, seed: int
) -> CaseResult:
    """One case of ``pyxos bench kv --vs pysyncobj``: callbacks, load in the leader.

    Its best configuration found here (the README's comparison): batching on, entries
    sent and the loop ticked every 1 ms (``appendEntriesPeriod`` = ``autoTickPeriod``
    = 0.001 s; with its defaults, 0.1 s and 0.05 s, one client waits ~100 ms a command).
    """
    reply, cpu = _run_nodes(
        clients,
        seconds=seconds,
        write_ratio=1.0 - read_ratio,
        value_bytes=value_size,
        keys=keys,
        mode="callbacks",
        load_on="leader",
        append_entries_period=0.001,
        batch=True,
        tick_period=0.001,
        seed=seed,
    )
    ops = int(reply["ops"])
    return CaseResult(
        system="pysyncobj",
        api="in-process",
        nodes=3,
        clients=clients,
        connections=0,
        value_size=value_size,
        read_ratio=read_ratio,
        seconds=seconds,
        ops=ops,
        ops_per_s=ops / seconds,
        p50_ms=float(reply["p50_ms"]),
        p90_ms=float(reply["p90_ms"]),
        p99_ms=float(reply["p99_ms"]),
        p999_ms=float(reply["p999_ms"]),
        max_ms=float(reply["max_ms"]),
        bytes_per_s=ops / seconds * value_size,
        errors=int(reply["errors"]),
        cpu_s_per_1k_ops=cpu / ops * 1000.0 if ops else None,
        fsync=False,
        note=NO_FSYNC_NOTE + "; load inside the leader; batch and tick every 1 ms",
    )


def run_pysyncobj_counter(clients: int, *, seconds: float, seed: int = 0) -> dict[str, Any]:
    """PySyncObj's own counter (``ReplCounter.inc``) on 3 processes, ``clients`` callback
    chains in the leader (batch and tick every 1 ms, as ``run_pysyncobj``): the load's
    reply (``ops``, latency percentiles in ms, ``errors``) and ``cpu_s`` of the nodes."""
    reply, cpu = _run_nodes(
        clients,
        seconds=seconds,
        write_ratio=1.0,
        value_bytes=0,
        keys=1,
        mode="callbacks",
        load_on="leader",
        append_entries_period=0.001,
        batch=True,
        tick_period=0.001,
        seed=seed,
        workload="counter",
    )
    return {**reply, "cpu_s": cpu}


def pysyncobj_available() -> bool:
    """Whether PySyncObj imports here."""
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    """Orchestrate: run PySyncObj (and pyxos, with ``--with-pyxos``) per client count."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["node"]:
        _node_main(argv[1], json.loads(argv[2]), argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", default="1,16,64", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--write-ratio", type=float, default=0.5, help="fraction of writes")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (median shown)")
    parser.add_argument("--mode", choices=["callbacks", "threads"], default="callbacks")
    parser.add_argument("--load-on", choices=["leader", "follower"], default="leader")
    parser.add_argument(
        "--append-entries-period",
        type=float,
        default=0.1,
        help="PySyncObj appendEntriesPeriod in seconds (its default: 0.1)",
    )
    parser.add_argument(
        "--no-batch", action="store_true", help="PySyncObj appendEntriesUseBatch=False"
    )
    parser.add_argument(
        "--tick-period",
        type=float,
        default=0.05,
        help="PySyncObj autoTickPeriod in seconds (its default: 0.05)",
    )
    parser.add_argument("--with-pyxos", action="store_true", help="run pyxos beside it")
    parser.add_argument(
        "--pyxos-connections",
        type=int,
        default=4,
        help="client connections pyxos multiplexes its clients over (ClientPool)",
    )
    parser.add_argument("--json", action="store_true", help="also print every run as JSON")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    systems = ["pysyncobj", "pyxos"] if args.with_pyxos else ["pysyncobj"]
    runs: dict[tuple[str, int], list[BenchResult]] = {(s, c): [] for s in systems for c in counts}
    load: dict[str, Any] = {
        "seconds": args.seconds,
        "write_ratio": args.write_ratio,
        "value_bytes": args.value_bytes,
        "keys": args.keys,
    }
    try:
        for rep in range(args.repeat):
            for c in counts:
                for system in systems:
                    if system == "pyxos":
                        conns = min(c, args.pyxos_connections)
                        result = bench_local_cluster(3, c, connections=conns, seed=rep, **load)
                    else:
                        result = bench_pysyncobj(
                            c,
                            mode=args.mode,
                            load_on=args.load_on,
                            append_entries_period=args.append_entries_period,
                            batch=not args.no_batch,
                            tick_period=args.tick_period,
                            seed=rep,
                            **load,
                        )
                    runs[system, c].append(result)
                    if args.json:
                        print(json.dumps(result.to_json()), flush=True)
    finally:
        _kill_all()
    print(format_results([median_result(runs[s, c]) for c in counts for s in systems]))
    print(f"\nNote: {NO_FSYNC_NOTE}; pyxos fsyncs on every node before it acknowledges.")


if __name__ == "__main__":
    main()
