"""Catch-up of a restarted node under write load, on a local cluster of real processes.

Theory of operation
-------------------
A fresh ``LocalCluster`` (real ``pyxos serve`` processes, fsync on every node) is
loaded by closed-loop writers (``ClientPool`` sessions, puts only) for the whole run.
After a warm-up the leader (or, with ``--victim follower``, a follower) is killed with
SIGKILL and kept down for ``--down`` seconds while the writers go on; the rate at which
the new leader applies slots meanwhile is the **write rate**. Then the node is
restarted with the same command line, and its ``/v1/status`` is polled: the time until
it answers at all, and the time until its applied slot reaches the slot the leader
had applied when it restarted (the **gap**). The **catch-up rate** is the slots the
restarted node applied over that time (the gap and what was written meanwhile, since
the load never stops), from the restart and from its first status answer (the status is
polled every 50 ms, so a catch-up shorter than that reads as 0.05 s). Finally the
current leader is killed and the time until the remaining nodes have a leader again is
measured (the restarted node is needed for every quorum from then on).

Run: ``python bench/bench_catchup.py --down 20 --clients 64 --repeat 3``.
Every figure is wall-clock on a shared machine: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyxos.client.aio import ClientError, OutcomeUnknown
from pyxos.client.mux import ClientPool
from pyxos.localcluster import LocalCluster


@dataclass
class CatchupResult:
    """What one run measured (seconds, slots, slots per second)."""

    down_seconds: float
    write_slots_per_s: float
    write_commands_per_s: float
    gap_slots: int
    first_status_s: float
    catch_up_s: float
    catch_up_slots: int
    catch_up_slots_per_s: float
    """Slots applied over the time from the restart (process start included)."""
    catch_up_after_start_s: float
    """From the first ``/v1/status`` answer until caught up (process start excluded)."""
    catch_up_after_start_slots_per_s: float
    status_misses: int
    new_leader_after_kill_s: float


class _Load:
    """Closed-loop writers in a thread of their own (their own event loop)."""

    def __init__(self, addresses: dict[int, str], cluster_id: str, clients: int, conns: int):
        self.addresses = addresses
        self.cluster_id = cluster_id
        self.clients = clients
        self.conns = conns
        self.acked = 0
        self.unknown = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            import uvloop

            uvloop.run(self._main())
        except ImportError:
            asyncio.run(self._main())

    async def _main(self) -> None:
        async with ClientPool(
            self.addresses, cluster=self.cluster_id, connections=self.conns, timeout=5.0
        ) as pool:
            sessions = [pool.session() for _ in range(self.clients)]
            await asyncio.gather(*(self._writer(i, s) for i, s in enumerate(sessions)))

    async def _writer(self, index: int, session: Any) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                await session.put(f"k{(index * 7919 + n) % 5000}", f"{index}.{n}".ljust(100, "x"))
                self.acked += 1
            except OutcomeUnknown:
                self.unknown += 1
            except ClientError:
                await asyncio.sleep(0.05)


def _applied(cluster: LocalCluster, node: int, timeout: float = 0.5) -> int | None:
    st = cluster.node_status(node, timeout=timeout)
    return None if st is None else int(st["applied"])


def run_once(args: argparse.Namespace, base: Path) -> CatchupResult:
    """One kill, down period, restart, catch-up and second kill."""
    cluster = LocalCluster.create(
        base, args.nodes, cluster_id="pyxos-catchup", snapshot_every=args.snapshot_every
    )
    try:
        cluster.start()
        leader = cluster.wait_for_leader(15.0)
        addresses = {n.node_id: n.client_address for n in cluster.nodes.values()}
        load = _Load(addresses, cluster.cluster_id, args.clients, args.connections)
        load.start()
        time.sleep(args.warmup)
        victim = leader
        if args.victim == "follower":
            victim = next(i for i in cluster.nodes if i != leader)
        cluster.kill(victim)
        others = [i for i in cluster.nodes if i != victim]
        new_leader = cluster.wait_for_leader(15.0, among=others)
        t0 = time.monotonic()
        a0 = _applied(cluster, new_leader, 2.0) or 0
        acked0 = load.acked
        time.sleep(args.down)
        down = time.monotonic() - t0
        a1 = _applied(cluster, new_leader, 2.0) or a0
        write_rate = (a1 - a0) / down
        cmd_rate = (load.acked - acked0) / down
        restarted_at = time.monotonic()
        cluster.start_node(victim)
        target = _applied(cluster, new_leader, 2.0) or a1
        first_status = None
        misses = 0
        start_applied: int | None = None
        deadline = restarted_at + args.timeout
        caught = None
        report_at = 0.0
        while time.monotonic() < deadline:
            mine = _applied(cluster, victim)
            now = time.monotonic()
            if mine is None:
                if first_status is not None:
                    misses += 1
                time.sleep(0.05)
                continue
            if first_status is None:
                first_status = now - restarted_at
                start_applied = mine
            if mine >= target:
                caught = (now - restarted_at, mine)
                break
            if args.verbose and now >= report_at:
                report_at = now + 5.0
                print(f"  {now - restarted_at:6.1f}s applied {mine} / {target}", flush=True)
            time.sleep(0.05)
        if caught is None:
            raise RuntimeError(f"node {victim} did not catch up within {args.timeout}s")
        catch_s, applied_then = caught
        gained = applied_then - (start_applied or 0)
        # Then kill the current leader: the restarted node is needed for a quorum now.
        current = cluster.wait_for_leader(15.0)
        cluster.kill(current)
        t_kill = time.monotonic()
        cluster.wait_for_leader(60.0, among=[i for i in cluster.nodes if i != current])
        elect = time.monotonic() - t_kill
        load.stop()
        return CatchupResult(
            down_seconds=round(down, 2),
            write_slots_per_s=round(write_rate),
            write_commands_per_s=round(cmd_rate),
            gap_slots=target - (start_applied or 0),
            first_status_s=round(first_status or 0.0, 2),
            catch_up_s=round(catch_s, 2),
            catch_up_slots=gained,
            catch_up_slots_per_s=round(gained / max(catch_s, 1e-9)),
            catch_up_after_start_s=round(catch_s - (first_status or 0.0), 2),
            catch_up_after_start_slots_per_s=round(
                gained / max(catch_s - (first_status or 0.0), 0.05)
            ),
            status_misses=misses,
            new_leader_after_kill_s=round(elect, 2),
        )
    finally:
        cluster.stop()


def main() -> None:
    """Parse options, run ``--repeat`` times, print each run and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--down", type=float, default=20.0, help="seconds the node stays down")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--victim", choices=("leader", "follower"), default="leader")
    parser.add_argument("--snapshot-every", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=240.0, help="catch-up deadline")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="print catch-up progress")
    args = parser.parse_args()
    results = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="pyxos-catchup-") as tmp:
            r = run_once(args, Path(tmp))
        results.append(r)
        print(json.dumps(asdict(r)), flush=True)
    if len(results) > 1:
        med = {k: statistics.median(getattr(r, k) for r in results) for k in asdict(results[0])}
        print("median", json.dumps(med))


if __name__ == "__main__":
    main()
