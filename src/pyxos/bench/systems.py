"""How each system is started, loaded and measured for one case of ``pyxos bench kv``.

Theory of operation
-------------------
Every ``run_*`` function takes a ``Load`` and returns one ``CaseResult``, starting the
system fresh and stopping every process it started in a ``finally``.

- ``run_pyxos``: a ``LocalCluster`` of real node processes (fsync on every node), the
  leader awaited, then the binary API driven by ``pyxos.benchmark.run_kv_bench``
  (a ``ClientPool`` over ``connections`` connections when fewer than the clients) or
  the HTTP API to the leader's HTTP port by ``wrk`` (``pyxos.bench.wrk``, one
  connection per client) or by ``loadgen.closed_loop`` with aiohttp (at most
  ``connections`` connections), as ``Load.http_loadgen`` says. At the measured
  window's edges it samples the node processes' CPU time and the leader's
  ``/v1/status`` driver counters, so the result carries CPU s per 1,000 ops and
  commands per leader fsync.
- ``run_etcd``: three ``etcd`` members on loopback (fsync on: etcd's default), loaded
  through its JSON gateway (``/v3/kv/put``, ``/v3/kv/range``, base64 keys and values)
  with the same generator as pyxos's HTTP API (wrk or aiohttp), or over gRPC with
  ``aetcd`` when asked and installed. CPU is sampled the same way; etcd's fsync
  count is not exposed here, so commands per fsync is None.
- ``run_ceiling``: ``bench.py`` of the ceiling (a development aid beside the
  repository, see its README) as a subprocess, whose one JSON line is read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pyxos.bench.histogram import Histogram
from pyxos.bench.loadgen import closed_loop, cpu_seconds
from pyxos.bench.results import CaseResult
from pyxos.bench.wrk import WrkResult, run_wrk, wrk_script, wrk_threads
from pyxos.benchmark import run_kv_bench
from pyxos.localcluster import LocalCluster, free_ports

__all__ = [
    "Load",
    "aetcd_available",
    "ceiling_script",
    "etcd_binary",
    "run_ceiling",
    "run_etcd",
    "run_pyxos",
]


@dataclass(frozen=True, slots=True)
class Load:
    """One case's load: the same for every system."""

    clients: int
    connections: int
    value_size: int
    read_ratio: float
    seconds: float
    nodes: int = 3
    keys: int = 1000
    warmup: float = 0.5
    seed: int = 0
    api: str = "binary"
    q2: int | None = None
    """pyxos's phase-2 quorum size (None: majorities; q1 is then the smallest legal)."""
    http_loadgen: str = "aiohttp"
    """The HTTP load generator: ``"aiohttp"`` (``loadgen.closed_loop``) or ``"wrk"``."""

    @property
    def conns(self) -> int:
        """Connections actually used (never more than the clients)."""
        return min(self.connections, self.clients)


def _run_loop(main: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class _Probe:
    """CPU of ``pids`` and an optional counter, sampled at the window's edges."""

    def __init__(self, pids: list[int], counter: Any = None, leader: int | None = None) -> None:
        self.pids = pids
        self.counter = counter
        self.leader = leader
        """The leader's pid, whose CPU is also sampled on its own."""
        self.cpu: dict[str, float] = {}
        self.leader_cpu: dict[str, float] = {}
        self.own_cpu: dict[str, float] = {}
        """This process's CPU (an in-process load generator's)."""
        self.count: dict[str, float | None] = {}

    async def __call__(self, edge: str) -> None:
        self.own_cpu[edge] = time.process_time()
        self.cpu[edge] = cpu_seconds(self.pids)
        if self.leader is not None:
            self.leader_cpu[edge] = cpu_seconds([self.leader])
        self.count[edge] = await self.counter() if self.counter is not None else None

    def cpu_per_1k(self, ops: int) -> float | None:
        if ops == 0 or len(self.cpu) < 2:
            return None
        return (self.cpu["end"] - self.cpu["start"]) / ops * 1000.0

    def leader_cpu_per_1k(self, ops: int) -> float | None:
        if ops == 0 or len(self.leader_cpu) < 2:
            return None
        return (self.leader_cpu["end"] - self.leader_cpu["start"]) / ops * 1000.0

    def own_cpu_per_1k(self, ops: int) -> float | None:
        if ops == 0 or len(self.own_cpu) < 2:
            return None
        return (self.own_cpu["end"] - self.own_cpu["start"]) / ops * 1000.0

    def per_count(self, ops: int) -> float | None:
        a, b = self.count.get("start"), self.count.get("end")
        if a is None or b is None or b <= a:
            return None
        return ops / (b - a)


async def _http_json(session: Any, method: str, url: str, **kw: Any) -> Any:
    async with session.request(method, url, **kw) as r:
        return await r.json(content_type=None)


# -- pyxos ---------------------------------------------------------------------------------


def run_pyxos(
    load: Load,
    *,
    record: str | None = None,
    leader_timeout: float = 15.0,
    system: str = "pyxos",
) -> CaseResult:
    """One case against a fresh local pyxos cluster (``load.q2``: its phase-2 quorum)."""
    with tempfile.TemporaryDirectory(prefix="pyxos-bench-") as tmp:
        cluster = LocalCluster.create(Path(tmp), load.nodes, cluster_id="pyxos-bench", q2=load.q2)
        try:
            cluster.start()
            leader = cluster.wait_for_leader(leader_timeout)
            pids = [p for i in cluster.nodes if (p := cluster.pid(i)) is not None]
            result: CaseResult = _run_loop(
                _load_pyxos(cluster, leader, pids, load, record, cluster.pid(leader))
            )
            return replace(result, system=system)
        finally:
            cluster.stop()


async def _load_pyxos(
    cluster: LocalCluster,
    leader: int,
    pids: list[int],
    load: Load,
    record: str | None,
    leader_pid: int | None = None,
) -> CaseResult:
    import aiohttp

    status_url = cluster.nodes[leader].http_url + "/v1/status"
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=load.conns), timeout=aiohttp.ClientTimeout(10)
        ) as session,
        aiohttp.ClientSession() as probe_session,
    ):

        async def fsyncs() -> float | None:
            try:
                status = await _http_json(probe_session, "GET", status_url)
                return float(status["driver"]["fsyncs"])
            except Exception:
                return None

        probe = _Probe(pids, fsyncs, leader_pid)
        hist = Histogram()
        errors = unknown = 0
        if load.api == "binary":
            latencies: list[float] = []
            addresses = {n.node_id: n.client_address for n in cluster.nodes.values()}
            _, bench = await asyncio.gather(
                _window(load, probe),
                run_kv_bench(
                    addresses,
                    cluster.cluster_id,
                    clients=load.clients,
                    connections=load.conns,
                    seconds=load.seconds,
                    write_ratio=1.0 - load.read_ratio,
                    value_bytes=load.value_size,
                    keys=load.keys,
                    record=record,
                    warmup=load.warmup,
                    seed=load.seed,
                    nodes=load.nodes,
                    latency_sink=latencies,
                ),
            )
            for v in latencies:
                hist.record(v)
            errors, unknown = bench.errors, bench.unknown
        elif load.http_loadgen == "wrk":
            wout = await _wrk_load("pyxos", cluster.nodes[leader].http_url, load, probe)
            return _wrk_case(
                wout,
                load,
                system="pyxos",
                api=load.api,
                cpu_s_per_1k_ops=probe.cpu_per_1k(wout.ops),
                cmds_per_fsync=probe.per_count(wout.ops),
            )
        else:
            base = cluster.nodes[leader].http_url + "/v1/kv/"

            async def put(_i: int, key: str, value: str) -> bool:
                async with session.put(base + key, data=value.encode()) as r:
                    await r.read()
                    return r.status == 200

            async def get(_i: int, key: str) -> bool:
                async with session.get(base + key) as r:
                    await r.read()
                    return r.status in (200, 404)

            out = await closed_loop(
                clients=load.clients,
                seconds=load.seconds,
                warmup=load.warmup,
                read_ratio=load.read_ratio,
                value_size=load.value_size,
                keys=load.keys,
                seed=load.seed,
                put=put,
                get=get,
                on_window=probe,
            )
            hist, errors = out.hist, out.errors
    return CaseResult.from_histogram(
        hist,
        seconds=load.seconds,
        value_size=load.value_size,
        system="pyxos",
        api=load.api,
        nodes=load.nodes,
        clients=load.clients,
        connections=load.conns,
        read_ratio=load.read_ratio,
        errors=errors,
        unknown=unknown,
        cpu_s_per_1k_ops=probe.cpu_per_1k(hist.count),
        cmds_per_fsync=probe.per_count(hist.count),
        leader_cpu_s_per_1k_ops=probe.leader_cpu_per_1k(hist.count),
        loadgen_cpu_s_per_1k_ops=probe.own_cpu_per_1k(hist.count),
    )


async def _wrk_load(system: str, url: str, load: Load, probe: _Probe) -> WrkResult:
    """``load`` through wrk against ``system``'s HTTP API at ``url`` (its script from
    ``wrk_script``), ``probe`` told of the measured window."""
    script = wrk_script(
        system,
        keys=load.keys,
        read_ratio=load.read_ratio,
        value_size=load.value_size,
        seed=load.seed,
    )
    return await run_wrk(
        url,
        script,
        connections=load.conns,
        seconds=load.seconds,
        warmup=load.warmup,
        on_window=probe,
    )


def _wrk_case(out: WrkResult, load: Load, *, note: str = "", **kw: Any) -> CaseResult:
    """The ``CaseResult`` of a measured wrk run (wrk's own percentiles)."""
    loadgen = f"load by wrk ({wrk_threads(load.conns)} threads)"
    return CaseResult(
        nodes=load.nodes,
        clients=load.clients,
        connections=load.conns,
        value_size=load.value_size,
        read_ratio=load.read_ratio,
        seconds=out.seconds,
        ops=out.ops,
        ops_per_s=out.ops_per_s,
        p50_ms=out.p50_ms,
        p90_ms=out.p90_ms,
        p99_ms=out.p99_ms,
        p999_ms=out.p999_ms,
        max_ms=out.max_ms,
        bytes_per_s=out.ops_per_s * load.value_size,
        errors=out.errors,
        note="; ".join(n for n in (note, loadgen) if n),
        **kw,
    )


async def _window(load: Load, probe: _Probe) -> None:
    """Sample ``probe`` at the edges of run_kv_bench's window (it starts now)."""
    start = time.perf_counter()
    await asyncio.sleep(load.warmup)
    await probe("start")
    await asyncio.sleep(max(0.0, start + load.warmup + load.seconds - time.perf_counter()))
    await probe("end")


# -- etcd ----------------------------------------------------------------------------------


def etcd_binary() -> str | None:
    """The ``etcd`` on the PATH, or None."""
    return shutil.which("etcd")


def aetcd_available() -> bool:
    """Whether the asyncio gRPC etcd client ``aetcd`` imports."""
    try:
        import aetcd  # noqa: F401
    except ImportError:
        return False
    return True


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class _Etcd:
    """Three etcd members on loopback in ``base``; ``stop`` kills them all."""

    def __init__(self, base: Path, nodes: int) -> None:
        ports = free_ports(2 * nodes)
        self.client_ports = ports[:nodes]
        peer_ports = ports[nodes:]
        initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(peer_ports))
        self.procs: list[subprocess.Popen[bytes]] = []
        binary = etcd_binary() or "etcd"
        for i in range(nodes):
            cmd = [
                binary,
                f"--name=m{i}",
                f"--data-dir={base / f'm{i}'}",
                f"--listen-client-urls=http://127.0.0.1:{self.client_ports[i]}",
                f"--advertise-client-urls=http://127.0.0.1:{self.client_ports[i]}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_ports[i]}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_ports[i]}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=pyxos-bench",
                "--log-level=error",
                "--logger=zap",
            ]
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.client_ports[i]}"

    def wait_for_leader(self, timeout: float) -> int:
        """The index of the leader member, once every member answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                members: dict[str, int] = {}
                leader_id = None
                for i in range(len(self.procs)):
                    req = urllib.request.Request(
                        self.url(i) + "/v3/maintenance/status", data=b"{}", method="POST"
                    )
                    with urllib.request.urlopen(req, timeout=1.0) as r:
                        status = json.loads(r.read())
                    members[status["header"]["member_id"]] = i
                    leader_id = status.get("leader")
                if leader_id in members:
                    return members[str(leader_id)]
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"etcd elected no leader within {timeout} s")

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5.0)


def run_etcd(load: Load, *, grpc: bool) -> CaseResult:
    """One case against a fresh 3-member etcd: gRPC (aetcd) or the JSON gateway."""
    with tempfile.TemporaryDirectory(prefix="pyxos-bench-etcd-") as tmp:
        etcd = _Etcd(Path(tmp), load.nodes)
        try:
            leader = etcd.wait_for_leader(20.0)
            result: CaseResult = _run_loop(_load_etcd(etcd, leader, load, grpc))
            return result
        finally:
            etcd.stop()


async def _load_etcd(etcd: _Etcd, leader: int, load: Load, grpc: bool) -> CaseResult:
    import aiohttp

    probe = _Probe([p.pid for p in etcd.procs])
    common: dict[str, Any] = {
        "clients": load.clients,
        "seconds": load.seconds,
        "warmup": load.warmup,
        "read_ratio": load.read_ratio,
        "value_size": load.value_size,
        "keys": load.keys,
        "seed": load.seed,
        "on_window": probe,
    }
    if grpc:
        import aetcd

        port = etcd.client_ports[leader]
        grpc_clients = [aetcd.Client("127.0.0.1", port) for _ in range(load.conns)]
        try:

            async def gput(i: int, key: str, value: str) -> bool:
                await grpc_clients[i % len(grpc_clients)].put(key.encode(), value.encode())
                return True

            async def gget(i: int, key: str) -> bool:
                await grpc_clients[i % len(grpc_clients)].get(key.encode())
                return True

            out = await closed_loop(put=gput, get=gget, **common)
        finally:
            for c in grpc_clients:
                with contextlib.suppress(Exception):
                    await c.close()
        api = "grpc (aetcd)"
    elif load.http_loadgen == "wrk":
        wout = await _wrk_load("etcd", etcd.url(leader), load, probe)
        return _wrk_case(
            wout,
            load,
            system="etcd",
            api="http (JSON gateway)",
            cpu_s_per_1k_ops=probe.cpu_per_1k(wout.ops),
            note="linearizable reads (etcd default); fsync on",
        )
    else:
        base = etcd.url(leader)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=load.conns), timeout=aiohttp.ClientTimeout(10)
        ) as session:

            async def put(_i: int, key: str, value: str) -> bool:
                body = {"key": _b64(key), "value": _b64(value)}
                async with session.post(base + "/v3/kv/put", json=body) as r:
                    await r.read()
                    return r.status == 200

            async def get(_i: int, key: str) -> bool:
                async with session.post(base + "/v3/kv/range", json={"key": _b64(key)}) as r:
                    await r.read()
                    return r.status == 200

            out = await closed_loop(put=put, get=get, **common)
        api = "http (JSON gateway)"
    return CaseResult.from_histogram(
        out.hist,
        seconds=load.seconds,
        value_size=load.value_size,
        system="etcd",
        api=api,
        nodes=load.nodes,
        clients=load.clients,
        connections=load.conns,
        read_ratio=load.read_ratio,
        errors=out.errors,
        cpu_s_per_1k_ops=probe.cpu_per_1k(out.hist.count),
        note="linearizable reads (etcd default); fsync on",
    )


# -- the ceiling ---------------------------------------------------------------------------


def ceiling_script(ceiling_dir: str | Path | None) -> Path | None:
    """``bench.py`` of the ceiling: in ``ceiling_dir``, else ``../shared/ceiling``."""
    base = Path(ceiling_dir) if ceiling_dir else Path("..") / "shared" / "ceiling"
    script = base / "bench.py"
    return script if script.is_file() else None


def ceiling_json(cmd: list[str], script: Path, seconds: float, *, attempts: int) -> dict[str, Any]:
    """Run the ceiling's ``bench.py`` (``cmd``, in its directory) and return the JSON
    object it prints last. Its nodes get 3 s to start, which a loaded machine may
    miss: up to ``attempts`` tries, 2 s apart; ``RuntimeError`` after the last."""
    for attempt in range(attempts):
        if attempt:
            time.sleep(2.0)  # let the machine settle before the next try
        proc = subprocess.run(
            cmd,
            cwd=script.parent,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            check=False,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
        if proc.returncode == 0 and lines:
            doc: dict[str, Any] = json.loads(lines[-1])
            return doc
    raise RuntimeError(
        f"the ceiling failed {attempts} times (exit {proc.returncode}): {proc.stderr[-500:]}"
    )


def run_ceiling(load: Load, script: Path) -> CaseResult:
    """One case of the ceiling (writes only, 10-byte commands: its fixed load)."""
    cmd = [
        sys.executable,
        str(script.name),
        "--mode",
        "clients",
        "--conns",
        str(load.conns),
        "--clients",
        str(load.clients),
        "--duration",
        str(load.seconds),
        "--warmup",
        "1",
    ]
    doc = ceiling_json(cmd, script, load.seconds, attempts=6)
    ops_per_s = float(doc["commits_per_s"])
    # Per-process CPU in percent of one core over the window; the nodes only (not
    # the load generator "LG"), as for pyxos.
    cpu = doc.get("cpu")
    node_cpu_s = (
        sum(float(v["pct"]) for k, v in cpu.items() if k != "LG") / 100.0 * load.seconds
        if isinstance(cpu, dict)
        else None
    )
    return CaseResult(
        system="ceiling",
        api="binary",
        nodes=3,
        clients=load.clients,
        connections=load.conns,
        value_size=10,
        read_ratio=0.0,
        seconds=load.seconds,
        ops=round(ops_per_s * load.seconds),
        ops_per_s=ops_per_s,
        p50_ms=float(doc.get("p50_ms", 0.0)),
        p90_ms=float(doc["p90_ms"]) if "p90_ms" in doc else None,
        p99_ms=float(doc.get("p99_ms", 0.0)),
        p999_ms=float(doc.get("p999_ms", 0.0)),
        max_ms=float(doc.get("max_ms", 0.0)),
        bytes_per_s=ops_per_s * 10,
        cpu_s_per_1k_ops=(
            node_cpu_s / (ops_per_s * load.seconds) * 1000.0
            if node_cpu_s is not None and ops_per_s
            else None
        ),
        note="no Paxos: the I/O shape only; 10-byte writes",
    )
