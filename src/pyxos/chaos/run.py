"""``pyxos chaos``: the whole service under a nemesis, on real processes, then a verdict.

Theory of operation
-------------------
One run, all in one event loop of the harness process:

1. A local cluster of real ``pyxos serve`` processes (``pyxos.localcluster``) whose
   peer addresses are fault-injecting proxies (``pyxos.chaos.proxy``), one per
   directed pair, so the harness controls every message between nodes.
2. ``clients`` concurrent clients, half on the binary protocol (``AsyncClient``) and
   half on the HTTP API, run a random get/put/cas/delete workload over a few keys
   (so operations conflict) and record every call in the history format
   (docs/architecture.md, "Histories"): a timed-out or unanswered write is recorded
   with an unknown outcome, never as a failure.
3. The nemesis plays the schedule of ``pyxos.chaos.schedule`` from ``seed``: kills and
   restarts with the same command line, SIGSTOP pauses, partitions, loss, delay, a
   wiped data directory and (root, ``disk-full``) a full disk: every node's data
   directory is then a tmpfs of ``DISK_SIZE`` of its own, and the fault fills one to
   the last byte with a file of zeros and deletes it at its end. Each start and end is
   logged with the history's clock.
4. After the last fault is healed: every node is resumed and restarted, the harness
   waits until every node has applied the same slot, reads every key once more
   (recorded: a lost acknowledged write shows up as a linearizability violation),
   compares every node's applied state by checksum (stale local reads of every key),
   and checks the history with the linearizability checker.

The report gives operations ok / failed / unknown, violations, leader changes, the time
from each fault to the next successful write, the recovery time after the last heal,
the per-node checksums and, when matplotlib is installed, a PNG timeline. A failing run
prints the seed and the one command that replays the same schedule.

Blocking calls (``LocalCluster`` uses subprocesses and urllib) run in a thread, so the
proxies in this loop never stall while the harness waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from pyxos.chaos.netns import NetnsNetwork
from pyxos.chaos.proxy import LinkFaults, ProxyMesh
from pyxos.chaos.schedule import CLOCK_SKEW, KINDS, Fault, make_schedule
from pyxos.check.history import parse_line
from pyxos.check.linearizability import check_history
from pyxos.client.aio import AsyncClient, ClientError, OutcomeUnknown
from pyxos.localcluster import LocalCluster, free_ports

__all__ = ["ChaosOptions", "ChaosReport", "replay_command", "run_chaos"]

ELECTION_TIMEOUT = (0.3, 0.6)

DISK_SIZE = "128m"
"""The size of each node's tmpfs under the ``disk-full`` nemesis (WAL segments of
``DISK_WAL_SEGMENT_BYTES`` then, so compaction keeps a node far below it)."""
DISK_WAL_SEGMENT_BYTES = 4 * 1024 * 1024
FILLER = "chaos-disk-filler"


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    """Everything that determines a run (and so its replay command)."""

    nodes: int = 3
    seconds: float = 60.0
    clients: int = 6
    seed: int = 1
    keys: int = 5
    nemesis: tuple[str, ...] = KINDS
    net: str = "proxy"
    """``proxy``: every network fault in the harness's proxies; ``netns`` (root): each
    node in its own network namespace, partitions and loss by iptables."""
    out_dir: Path | None = None
    """Where the history, report and plot go (default: a new temporary directory)."""


@dataclass(slots=True)
class FaultRecord:
    """A fault as it happened: the schedule entry, the node(s) hit, when."""

    fault: Fault
    hit: list[int]
    start_ns: int
    end_ns: int = 0
    next_write_s: float | None = None


@dataclass(slots=True)
class ChaosReport:
    """The verdict of a run."""

    options: ChaosOptions
    out_dir: Path
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    linearizable: bool | None = None
    check_message: str = ""
    checksums: dict[int, str] = field(default_factory=dict)
    applied: dict[int, int] = field(default_factory=dict)
    leader_changes: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    recovery_s: float | None = None
    problems: list[str] = field(default_factory=list)
    history_path: Path | None = None
    plot_path: Path | None = None

    @property
    def passed(self) -> bool:
        """No violation, identical state everywhere, nothing else wrong."""
        return (
            self.linearizable is True
            and not self.problems
            and len(set(self.checksums.values())) == 1
            and len(self.checksums) == self.options.nodes
        )

    def text(self) -> str:
        """The human-readable report."""
        o = self.options
        lines = [
            f"pyxos chaos: {o.nodes} nodes, {o.clients} clients, {o.seconds:g}s, seed {o.seed}",
            f"operations: {self.ok} ok, {self.failed} failed, {self.unknown} unknown",
            f"linearizable: {self.linearizable} {self.check_message}".rstrip(),
            f"leader changes: {self.leader_changes}",
            "faults (time to the next successful write after each):",
        ]
        for r in self.faults:
            nxt = "none" if r.next_write_s is None else f"{r.next_write_s:.3f}s"
            hit = ",".join(map(str, r.hit)) or "-"
            lines.append(f"  {r.fault.describe():<48} hit {hit:<6} next write {nxt}")
        windows = sorted(r.next_write_s for r in self.faults if r.next_write_s is not None)
        if windows:
            median = windows[len(windows) // 2]
            p90 = windows[min(len(windows) - 1, int(len(windows) * 0.9))]
            lines.append(
                f"  next-write windows: min {windows[0]:.3f}s median {median:.3f}s"
                f" p90 {p90:.3f}s max {windows[-1]:.3f}s"
            )
        rec = "none" if self.recovery_s is None else f"{self.recovery_s:.3f}s"
        lines.append(f"recovery after the last heal: {rec}")
        for node, digest in sorted(self.checksums.items()):
            lines.append(f"  node {node}: applied {self.applied.get(node)} checksum {digest}")
        same = len(set(self.checksums.values())) == 1
        lines.append(f"state identical on every node: {same}")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append(f"history: {self.history_path}")
        if self.plot_path is not None:
            lines.append(f"timeline: {self.plot_path}")
        lines.append("verdict: " + ("PASS" if self.passed else "FAIL"))
        if not self.passed:
            lines.append(f"replay: {replay_command(o)}")
        return "\n".join(lines)


def replay_command(o: ChaosOptions) -> str:
    """The one command that runs the same schedule again."""
    return (
        f"pyxos chaos --nodes {o.nodes} --time {o.seconds:g} --clients {o.clients} "
        f"--keys {o.keys} --seed {o.seed} --nemesis {','.join(o.nemesis)} --net {o.net}"
    )


class _Workload:
    """Closed-loop clients over the binary protocol and HTTP, recording a history."""

    def __init__(self, cluster: LocalCluster, options: ChaosOptions) -> None:
        self.cluster = cluster
        self.options = options
        self.history: list[dict[str, Any]] = []
        self.stop = asyncio.Event()
        self._rng = random.Random(options.seed ^ 0x5EED)
        self._counter = 0

    def _value(self, client: int) -> str:
        self._counter += 1
        return f"c{client}-{self._counter}"

    def _pick(self, rng: random.Random) -> tuple[str, str]:
        key = f"k{rng.randrange(self.options.keys)}"
        r = rng.random()
        op = "get" if r < 0.4 else "put" if r < 0.7 else "cas" if r < 0.9 else "delete"
        return op, key

    async def binary_client(self, index: int) -> None:
        rng = random.Random(self._rng.getrandbits(64))
        addresses = {n.node_id: n.client_address for n in self.cluster.nodes.values()}
        async with AsyncClient(
            addresses,
            cluster=self.cluster.cluster_id,
            timeout=2.0,
            attempt_timeout=0.5,
            history=self.history.append,
        ) as client:
            known: dict[str, str | None] = {}
            while not self.stop.is_set():
                op, key = self._pick(rng)
                with contextlib.suppress(ClientError):
                    if op == "get":
                        known[key] = await client.get(key)
                    elif op == "put":
                        await client.put(key, self._value(index))
                    elif op == "cas":
                        await client.cas(key, known.get(key), self._value(index))
                    else:
                        await client.delete(key)

    async def http_client(self, index: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(self._rng.getrandbits(64))
        client_id = 1_000_000_000 + index  # history ids of HTTP clients (one op at a time)
        urls = [n.http_url for n in self.cluster.nodes.values()]
        known: dict[str, str | None] = {}
        while not self.stop.is_set():
            op, key = self._pick(rng)
            value = self._value(index) if op in ("put", "cas") else None
            expected = known.get(key) if op == "cas" else None
            record: dict[str, Any] = {
                "client": client_id,
                "op": op,
                "key": key,
                "value": value,
                "expected": expected,
                "call": time.monotonic_ns(),
                "return": None,
                "output": None,
                "ok": None,
            }
            # In the history from its call on: a call still running when the workload is
            # cancelled stays there with an unknown outcome, never silently left out.
            self.history.append(record)
            outcome = await self._http_call(session, rng.choice(urls), op, key, value, expected)
            if outcome is None:  # a read refused: no event (it had no effect)
                record["refused"] = True
                await asyncio.sleep(0.02)
                continue
            ok, output = outcome
            if ok is None:  # a write without an answer: its outcome is unknown
                await asyncio.sleep(0.02)
                continue
            record["return"] = time.monotonic_ns()
            record["ok"] = ok
            if op == "get":
                record["output"] = output
                known[key] = output

    async def _http_call(
        self,
        session: aiohttp.ClientSession,
        base: str,
        op: str,
        key: str,
        value: str | None,
        expected: str | None,
    ) -> tuple[bool | None, str | None] | None:
        """(ok, output), (None, None) for an unknown outcome, None for a read refused."""
        url = f"{base}/v1/kv/{key}"
        timeout = aiohttp.ClientTimeout(total=2.0)
        try:
            if op == "get":
                async with session.get(url, timeout=timeout) as resp:
                    if resp.status == 404:
                        return True, None
                    if resp.status != 200:
                        return None
                    return True, (await resp.json())["value"]
            if op == "put":
                async with session.put(url, data=value, timeout=timeout) as resp:
                    return (True, None) if resp.status == 200 else (None, None)
            if op == "delete":
                async with session.delete(url, timeout=timeout) as resp:
                    return (True, None) if resp.status == 200 else (None, None)
            body = {"expected": expected, "value": value}
            async with session.post(url + "/cas", json=body, timeout=timeout) as resp:
                if resp.status != 200:
                    return None, None
                return bool((await resp.json())["ok"]), None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError):
            return None if op == "get" else (None, None)

    async def final_reads(self) -> None:
        """Read every key once more, recorded: what the cluster kept after the faults."""
        addresses = {n.node_id: n.client_address for n in self.cluster.nodes.values()}
        async with AsyncClient(
            addresses, cluster=self.cluster.cluster_id, timeout=10.0, history=self.history.append
        ) as client:
            for k in range(self.options.keys):
                with contextlib.suppress(OutcomeUnknown):
                    await client.get(f"k{k}")


class _Nemesis:
    """Plays the schedule against the processes and the proxies."""

    def __init__(
        self,
        cluster: LocalCluster,
        mesh: ProxyMesh,
        faults: list[Fault],
        t0: float,
        netns: NetnsNetwork | None = None,
    ) -> None:
        self.cluster = cluster
        self.mesh = mesh
        self.netns = netns
        self.faults = faults
        self.t0 = t0
        self.records: list[FaultRecord] = []
        self.paused: set[int] = set()
        self.down: set[int] = set()

    async def leader(self) -> int | None:
        return await asyncio.to_thread(self.cluster.leader)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for fault in self.faults:
            await asyncio.sleep(max(0.0, self.t0 + fault.start - loop.time()))
            record = await self._start(fault)
            self.records.append(record)
            await asyncio.sleep(fault.duration)
            await self._end(record)
            record.end_ns = time.monotonic_ns()

    async def _resolve(self, target: int | str) -> int:
        if target == "leader":
            leader = await self.leader()
            return leader if leader is not None else 1
        return int(target)

    async def _start(self, fault: Fault) -> FaultRecord:
        ids = list(self.cluster.nodes)
        hit: list[int] = []
        if fault.kind == "wipe":
            # A second node losing its state while the first still rebuilds would be a
            # majority without state in a 3-node cluster: outside the failure model.
            await self._wait_rebuilt()
        if fault.kind in ("kill", "wipe", "clock"):
            node = await self._resolve(fault.target)
            hit = [node]
            await asyncio.to_thread(self.cluster.kill, node)
            self.down.add(node)
            if fault.kind == "clock":
                self.cluster.extra_args[node] = ["--chaos-clock", f"{fault.amount:.4f}"]
            if fault.kind == "wipe":
                await asyncio.to_thread(self.cluster.wipe, node)
        elif fault.kind == "pause":
            node = await self._resolve(fault.target)
            hit = [node]
            self.cluster.kill(node, signal.SIGSTOP)
            self.paused.add(node)
        elif fault.kind == "partition":
            blocked: set[tuple[int, int]] = set()
            if fault.mode in ("halves", "bridge"):
                a, b = (set(g) for g in fault.groups)
                blocked = {(x, y) for x in a - b for y in b - a}
                blocked |= {(y, x) for x, y in blocked}
                hit = sorted(a ^ b)
            elif fault.mode == "isolate":
                node = await self._resolve("leader")
                hit = [node]
                blocked = {(node, y) for y in ids if y != node}
                blocked |= {(y, x) for x, y in blocked}
            else:  # oneway: the node's messages are lost, it still hears the others
                node = await self._resolve(fault.target)
                hit = [node]
                blocked = {(node, y) for y in ids if y != node}
            if self.netns is not None:
                await asyncio.to_thread(self.netns.block, blocked)
            else:
                self.mesh.set(blocked, LinkFaults(blocked=True))
        elif fault.kind == "loss":
            if self.netns is not None:
                await asyncio.to_thread(self.netns.lose, fault.pairs, fault.amount)
            else:
                self.mesh.set(fault.pairs, LinkFaults(loss=fault.amount))
        elif fault.kind == "delay":
            self.mesh.set(fault.pairs, LinkFaults(delay=(fault.amount / 4, fault.amount)))
        elif fault.kind == "disk-full":
            node = await self._resolve(fault.target)
            hit = [node]
            await asyncio.to_thread(fill_disk, self.cluster.data_dir(node))
        return FaultRecord(fault, hit, time.monotonic_ns())  # from when it took effect

    async def _wait_rebuilt(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            statuses = await asyncio.to_thread(self.cluster.status)
            if all(s is not None and not s.get("rebuilding") for s in statuses.values()):
                return
            await asyncio.sleep(0.1)

    async def _end(self, record: FaultRecord) -> None:
        kind = record.fault.kind
        if kind in ("kill", "wipe", "clock"):
            for node in record.hit:
                await asyncio.to_thread(self.cluster.start_node, node)
                self.down.discard(node)
        elif kind == "pause":
            for node in record.hit:
                self.cluster.kill(node, signal.SIGCONT)
                self.paused.discard(node)
        elif kind == "disk-full":
            for node in record.hit:
                free_disk(self.cluster.data_dir(node))
        else:
            await self._heal_network()

    async def _heal_network(self) -> None:
        self.mesh.heal()
        if self.netns is not None:
            await asyncio.to_thread(self.netns.heal)

    async def heal_all(self) -> None:
        await self._heal_network()
        for node in self.cluster.nodes:
            free_disk(self.cluster.data_dir(node))
        for node in list(self.paused):
            self.cluster.kill(node, signal.SIGCONT)
        self.paused.clear()
        for node in list(self.down):
            await asyncio.to_thread(self.cluster.start_node, node)
        self.down.clear()


def fill_disk(data_dir: Path) -> int:
    """Take every free byte of ``data_dir``'s file system with one file; its size."""
    fd = os.open(data_dir / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    written, chunk = 0, b"\0" * (1 << 20)
    try:
        while chunk:
            try:
                written += os.write(fd, chunk)
            except OSError:  # ENOSPC: try smaller pieces down to one byte
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return written


def free_disk(data_dir: Path) -> None:
    """Delete the file ``fill_disk`` made (if any)."""
    with contextlib.suppress(FileNotFoundError):
        (data_dir / FILLER).unlink()


def mount_disks(cluster: LocalCluster) -> list[Path]:
    """Every node's data directory becomes a tmpfs of ``DISK_SIZE`` (root only)."""
    import subprocess

    mounted: list[Path] = []
    for node in sorted(cluster.nodes):
        path = cluster.data_dir(node)
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            unmount_disks(mounted)
            raise RuntimeError(f"disk-full: cannot mount a tmpfs on {path}: {done.stderr.strip()}")
        mounted.append(path)
    return mounted


def unmount_disks(paths: list[Path]) -> None:
    """Undo ``mount_disks`` (lazily: a node process may still be going away)."""
    import subprocess

    for path in paths:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _create_cluster(
    base: Path, nodes: int, netns: NetnsNetwork | None, nemesis: tuple[str, ...], seed: int
) -> tuple[LocalCluster, dict[tuple[int, int], int], str]:
    """The cluster's configuration with every peer address a proxy; the proxy ports and
    the address the proxies listen on."""
    cluster = LocalCluster.create(
        base,
        nodes,
        cluster_id="pyxos-chaos",
        election_timeout=ELECTION_TIMEOUT,
        hosts=netns.ips if netns is not None else None,
    )
    proxy_host = netns.bridge_ip if netns is not None else "127.0.0.1"
    ids = sorted(cluster.nodes)
    pairs = [(a, b) for a in ids for b in ids if a != b]
    ports = dict(zip(pairs, free_ports(len(pairs)), strict=True))
    if netns is not None:
        netns.link_ports = ports
        cluster.launch_prefix = {i: netns.launcher(i) for i in ids}
    if "clock" in nemesis:
        rng = random.Random(seed ^ 0xC10C)
        for i in ids:
            rate = 1.0 + rng.uniform(-CLOCK_SKEW, CLOCK_SKEW)
            cluster.extra_args[i] = ["--chaos-clock", f"{rate:.4f}"]
    for a in ids:
        path = base / f"node-{a}.toml"
        own = cluster.nodes[a]
        peers = ", ".join(
            f'"{b}" = "{own.host}:{own.peer_port}"'
            if b == a
            else f'"{b}" = "{proxy_host}:{ports[(a, b)]}"'
            for b in ids
        )
        lines = [
            f"peers = {{ {peers} }}" if line.startswith("peers = ") else line
            for line in path.read_text().splitlines()
        ]
        if "disk-full" in nemesis:  # small segments: compaction keeps the tmpfs roomy
            lines.insert(0, f"wal_segment_bytes = {DISK_WAL_SEGMENT_BYTES}")
        path.write_text("\n".join(lines) + "\n")
    return cluster, ports, proxy_host


def _checksum(cluster: LocalCluster, node: int) -> tuple[int | None, str]:
    """(applied slot, sha256 of every key and value) of one node's local state."""
    import urllib.request

    status = cluster.node_status(node, timeout=2.0) or {}
    entries: list[list[str]] = []
    start = ""
    while True:
        url = f"{cluster.nodes[node].http_url}/v1/kv?prefix=&stale=true"
        if start:
            url += f"&start_after={start}"
        with urllib.request.urlopen(url, timeout=5.0) as resp:
            body = json.loads(resp.read())
        page = body.get("entries", [])
        entries += page
        if not body.get("more") or not page:
            break
        start = page[-1][0]
    digest = hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()[:16]
    return status.get("applied"), digest


async def _converge(cluster: LocalCluster, timeout: float) -> dict[int, tuple[int | None, str]]:
    """Wait until every node reports the same applied slot; then checksum each."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        statuses = await asyncio.to_thread(cluster.status)
        applied = {i: (s or {}).get("applied") for i, s in statuses.items()}
        if None not in applied.values() and len(set(applied.values())) == 1:
            sums = {i: await asyncio.to_thread(_checksum, cluster, i) for i in cluster.nodes}
            if len({a for a, _ in sums.values()}) == 1:
                return sums
        await asyncio.sleep(0.2)
    return {i: await asyncio.to_thread(_checksum_or_none, cluster, i) for i in cluster.nodes}


def _checksum_or_none(cluster: LocalCluster, node: int) -> tuple[int | None, str]:
    try:
        return _checksum(cluster, node)
    except OSError:
        return None, "unreachable"


async def _leader_changes(cluster: LocalCluster) -> int:
    statuses = await asyncio.to_thread(cluster.status)
    return max(int((s or {}).get("leader_changes", 0)) for s in statuses.values())


def _next_write_after(ops: list[dict[str, Any]], start_ns: int) -> float | None:
    """Seconds from ``start_ns`` to the return of the first write called after it that
    succeeded (a write already in flight when the fault began does not count)."""
    returns = [
        o["return"]
        for o in ops
        if o["op"] != "get" and o["ok"] is not None and o["return"] and o["call"] >= start_ns
    ]
    return (min(returns) - start_ns) / 1e9 if returns else None


async def run_chaos(
    options: ChaosOptions, progress: Callable[[str], None] | None = None
) -> ChaosReport:
    """Run one chaos test; the report says whether it passed."""
    say = progress or (lambda _: None)
    out = options.out_dir or Path(tempfile.mkdtemp(prefix="pyxos-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    base = out / "cluster"
    if base.exists():
        shutil.rmtree(base)
    report = ChaosReport(options, out)
    netns: NetnsNetwork | None = None
    if options.net == "netns":
        netns = NetnsNetwork(range(1, options.nodes + 1), options.seed)
        await asyncio.to_thread(netns.setup)
    try:
        return await _run(options, out, base, report, netns, say)
    finally:
        if netns is not None:
            await asyncio.to_thread(netns.teardown)


async def _run(
    options: ChaosOptions,
    out: Path,
    base: Path,
    report: ChaosReport,
    netns: NetnsNetwork | None,
    say: Callable[[str], None],
) -> ChaosReport:
    cluster, link_ports, proxy_host = _create_cluster(
        base, options.nodes, netns, options.nemesis, options.seed
    )
    peers = {i: (n.host, n.peer_port) for i, n in cluster.nodes.items()}
    mesh = ProxyMesh(peers, link_ports, seed=options.seed, listen_host=proxy_host)
    await mesh.start()
    faults = make_schedule(
        options.seed, options.seconds, cluster.nodes, options.nemesis,
        election_timeout=ELECTION_TIMEOUT[1],
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    workload = _Workload(cluster, options)
    nemesis = _Nemesis(cluster, mesh, faults, loop.time(), netns)
    disks: list[Path] = []
    try:
        if "disk-full" in options.nemesis:
            disks = await asyncio.to_thread(mount_disks, cluster)
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(cluster.wait_for_leader, 20.0)
        say(f"cluster up in {base}; {len(faults)} faults scheduled")
        nemesis.t0 = loop.time()
        async with aiohttp.ClientSession() as session:
            n_http = options.clients // 2
            tasks = [
                loop.create_task(workload.binary_client(i)) for i in range(options.clients - n_http)
            ]
            tasks += [loop.create_task(workload.http_client(i, session)) for i in range(n_http)]
            nemesis_task = loop.create_task(nemesis.run())
            await asyncio.sleep(options.seconds)
            workload.stop.set()
            await asyncio.wait(tasks, timeout=15.0)
            for t in tasks:
                t.cancel()
            nemesis_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await nemesis_task
        await nemesis.heal_all()
        say("faults healed; waiting for every node to catch up")
        await asyncio.to_thread(cluster.wait_for_leader, 30.0)
        await workload.final_reads()
        sums = await _converge(cluster, 60.0)
        report.applied = {i: a for i, (a, _) in sums.items() if a is not None}
        report.checksums = {i: s for i, (_, s) in sums.items()}
        report.leader_changes = await _leader_changes(cluster)
        if nemesis.records:
            last_heal = max(r.end_ns for r in nemesis.records)
            report.recovery_s = _next_write_after(workload.history, last_heal)
    finally:
        await asyncio.to_thread(cluster.stop)
        await mesh.close()
        unmount_disks(disks)
    for record in nemesis.records:
        record.next_write_s = _next_write_after(workload.history, record.start_ns)
    report.faults = nemesis.records
    history = [op for op in workload.history if not op.pop("refused", False)]
    report.history_path = out / "history.jsonl"
    with open(report.history_path, "w") as f:
        for op in history:
            f.write(json.dumps(op) + "\n")
    for op in history:
        if op["ok"] is None:
            report.unknown += 1
        elif op["ok"] or op["op"] in ("cas", "get"):
            report.ok += 1
        else:
            report.failed += 1
    say(f"checking {len(history)} operations")
    ops = [parse_line(json.dumps(o)) for o in history]
    result = await asyncio.to_thread(check_history, ops, 300.0)
    report.linearizable = result.ok
    report.check_message = result.describe()
    if len(report.checksums) != options.nodes or "unreachable" in report.checksums.values():
        report.problems.append("a node did not answer at the end")
    report.plot_path = _plot(report, history, out / "timeline.png")
    (out / "report.txt").write_text(report.text() + "\n")
    return report


def _plot(report: ChaosReport, history: list[dict[str, Any]], path: Path) -> Path | None:
    """Throughput and latency over time with the faults marked; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    done = [o for o in history if o["return"] is not None and o["ok"] is not None]
    if not done:
        return None
    t0 = min(o["call"] for o in history)
    buckets: dict[int, list[float]] = {}
    for o in done:
        buckets.setdefault(int((o["return"] - t0) / 1e8), []).append(
            (o["return"] - o["call"]) / 1e6
        )
    xs = list(range(max(buckets) + 1))  # every 100 ms, an empty one as zero
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    ax1.plot([x / 10 for x in xs], [len(buckets.get(x, ())) * 10 for x in xs], lw=0.8)
    ax1.set_ylabel("ops/s")
    busy = [x for x in xs if x in buckets]
    p99 = [sorted(buckets[x])[int(len(buckets[x]) * 0.99)] for x in busy]
    ax2.plot([x / 10 for x in busy], p99, ".", ms=2, color="tab:red")
    ax2.set_ylabel("p99 latency ms")
    ax2.set_yscale("log")
    ax2.set_xlabel("seconds")
    colors = {"kill": "red", "wipe": "black", "pause": "orange", "partition": "purple",
              "loss": "green", "delay": "blue", "clock": "brown", "disk-full": "gray"}  # fmt: skip
    for r in report.faults:
        start = (r.start_ns - t0) / 1e9
        end = ((r.end_ns or r.start_ns) - t0) / 1e9
        for ax in (ax1, ax2):
            ax.axvspan(start, max(end, start + 0.05), alpha=0.15, color=colors[r.fault.kind])
        ax1.text(start, ax1.get_ylim()[1] * 0.95, r.fault.kind, fontsize=7, rotation=90, va="top")
    opts = report.options
    fig.suptitle(f"pyxos chaos: {opts.nodes} nodes, seed {opts.seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main_sync(options: ChaosOptions, progress: Callable[[str], None] | None = None) -> ChaosReport:
    """Run :func:`run_chaos` in a fresh event loop (the CLI's entry point)."""
    if os.environ.get("PYXOS_CHAOS_UVLOOP", "1") == "1":
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.run(run_chaos(options, progress))
    return asyncio.run(run_chaos(options, progress))
