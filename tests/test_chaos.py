"""pyxos chaos: the schedule, the fault proxy, and a whole run on real processes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from pyxos.chaos.netns import NetnsNetwork, netns_available
from pyxos.chaos.proxy import LinkFaults, ProxyMesh
from pyxos.chaos.run import ChaosOptions, ChaosReport, main_sync, replay_command
from pyxos.chaos.schedule import KINDS, make_schedule, parse_kinds
from pyxos.localcluster import free_ports

# -- the schedule ------------------------------------------------------------------------


def test_schedule_is_a_function_of_its_arguments() -> None:
    a = make_schedule(7, 120.0, [1, 2, 3, 4, 5])
    assert a == make_schedule(7, 120.0, [1, 2, 3, 4, 5])
    assert a != make_schedule(8, 120.0, [1, 2, 3, 4, 5])
    assert {f.kind for f in a} == set(KINDS)  # 120 s is long enough to draw every kind


def test_schedule_keeps_one_fault_at_a_time_and_heals_before_the_end() -> None:
    for seed in range(50):
        faults = make_schedule(seed, 60.0, [1, 2, 3], settle=5.0)
        for before, after in itertools.pairwise(faults):
            assert before.start + before.duration < after.start
        if faults:
            assert faults[-1].start + faults[-1].duration <= 60.0 - 5.0 + 3.0


def test_partitions_cut_off_a_minority_at_most_on_one_side() -> None:
    for seed in range(200):
        for f in make_schedule(seed, 60.0, [1, 2, 3, 4, 5], kinds=("partition",)):
            if f.mode == "halves":
                small = min(len(g) for g in f.groups)
                assert 1 <= small <= 2
                assert sorted(f.groups[0] + f.groups[1]) == [1, 2, 3, 4, 5]
            if f.mode == "bridge":
                assert len(set(f.groups[0]) & set(f.groups[1])) == 1


def test_parse_kinds() -> None:
    assert parse_kinds("all") == KINDS
    assert parse_kinds("kill, pause") == ("kill", "pause")
    assert "disk-full" not in KINDS  # root only: never part of "all"
    assert parse_kinds("all,disk-full") == (*KINDS, "disk-full")
    assert parse_kinds("disk-full,kill") == ("disk-full", "kill")
    with pytest.raises(ValueError, match="unknown nemesis"):
        parse_kinds("kill,meteor")


def test_a_failing_report_prints_the_replay_command() -> None:
    options = ChaosOptions(nodes=5, seconds=30, clients=4, seed=99, nemesis=("kill", "loss"))
    report = ChaosReport(options, Path("/tmp"), linearizable=False)
    text = report.text()
    assert "verdict: FAIL" in text
    assert replay_command(options) in text
    assert "--seed 99" in replay_command(options) and "--nemesis kill,loss" in text


# -- the proxy ---------------------------------------------------------------------------


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def _through_proxy(faults: LinkFaults, frames: list[bytes]) -> list[bytes]:
    """Send ``frames`` through one proxied link; return what the target received."""
    received = bytearray()
    done = asyncio.Event()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
        done.set()
        writer.close()

    server = await asyncio.start_server(target, "127.0.0.1", 0)
    target_port = server.sockets[0].getsockname()[1]
    (listen,) = free_ports(1)
    mesh = ProxyMesh({2: ("127.0.0.1", target_port)}, {(1, 2): listen}, seed=1)
    await mesh.start()
    mesh.set([(1, 2)], faults)
    _, writer = await asyncio.open_connection("127.0.0.1", listen)
    for f in frames:
        writer.write(_frame(f))
    await writer.drain()
    await asyncio.sleep(0)  # let the proxy read before the close
    # Wait until the proxy has decided the fate of every frame, then close.
    link = mesh.links[(1, 2)]
    async with asyncio.timeout(10):
        while link.forwarded + link.dropped < len(frames):
            await asyncio.sleep(0.01)
        if faults.delay != (0.0, 0.0):
            await asyncio.sleep(faults.delay[1] + 0.05)  # the delayed frames are released
    writer.close()
    async with asyncio.timeout(10):
        await done.wait()
    await mesh.close()
    server.close()
    out, view = [], bytes(received)
    while view:
        (n,) = struct.unpack_from(">I", view)
        out.append(view[4 : 4 + n])
        view = view[4 + n :]
    return out


FRAMES = [b"hello"] + [f"m{i}".encode() for i in range(200)]


def test_a_healthy_link_forwards_every_frame_in_order() -> None:
    assert asyncio.run(_through_proxy(LinkFaults(), FRAMES)) == FRAMES


def test_a_blocked_link_forwards_nothing_not_even_the_handshake() -> None:
    assert asyncio.run(_through_proxy(LinkFaults(blocked=True), FRAMES)) == []


def test_loss_drops_whole_frames_but_never_the_handshake() -> None:
    got = asyncio.run(_through_proxy(LinkFaults(loss=0.5), FRAMES))
    assert got[0] == b"hello"
    assert 20 < len(got) < 190  # some lost, some kept: 0.5 of 200 is far from both
    assert got == [f for f in FRAMES if f in set(got)]  # in order, none made up


def test_delay_keeps_the_order() -> None:
    got = asyncio.run(_through_proxy(LinkFaults(delay=(0.001, 0.05)), FRAMES))
    assert got == FRAMES


# -- a whole run -------------------------------------------------------------------------


def test_a_minute_of_every_nemesis_on_three_real_nodes(tmp_path: Path) -> None:
    options = ChaosOptions(nodes=3, seconds=60.0, clients=6, seed=2, out_dir=tmp_path)
    report = main_sync(options)
    print(report.text())
    assert report.passed, report.text()
    assert report.linearizable is True
    assert report.ok > 100
    assert len(report.checksums) == 3 and len(set(report.checksums.values())) == 1
    assert {r.fault.kind for r in report.faults} >= {"kill", "pause", "partition"}
    assert (tmp_path / "history.jsonl").stat().st_size > 0
    assert (tmp_path / "report.txt").read_text().rstrip().endswith("verdict: PASS")
    assert report.plot_path is not None and report.plot_path.stat().st_size > 10_000


@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="disk-full needs root (it mounts tmpfs)"
)
def test_full_disks_on_real_nodes_lose_nothing_and_the_nodes_resume(tmp_path: Path) -> None:
    schedule = make_schedule(6, 25.0, [1, 2, 3], ("disk-full", "kill"))
    assert [f.kind for f in schedule].count("disk-full") >= 2, schedule
    options = ChaosOptions(
        nodes=3, seconds=25.0, clients=4, seed=6, nemesis=("disk-full", "kill"), out_dir=tmp_path
    )
    report = main_sync(options)
    print(report.text())
    assert report.passed, report.text()
    assert report.ok > 100
    total_full = 0
    for path in sorted((tmp_path / "cluster").glob("node-*.log")):
        log = path.read_text()
        assert "fatal error" not in log, log[-3000:]
        # One piece per process start: a node killed while its disk was full never saw
        # the space come back in that life, but every later life resumed each time.
        lives = log.split(" of cluster ")
        for n, life in enumerate(lives):
            full = life.count("writes are refused until space returns")
            back = life.count("disk space is back")
            total_full += full
            last = n == len(lives) - 1
            assert back == full or (not last and back == full - 1), (path.name, n, log[-3000:])
    assert total_full >= 1


# -- network namespaces (root only) --------------------------------------------------------


def _connects(net: NetnsNetwork, node: int, port: int) -> bool:
    """Whether a process in ``node``'s namespace can open a TCP connection to the bridge."""
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(('{net.bridge_ip}',{port}),timeout=1.0)\n"
        "s.sendall(b'x'); s.close()"
    )
    done = subprocess.run(
        [*net.launcher(node), sys.executable, "-c", code], capture_output=True, check=False
    )
    return done.returncode == 0


@pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))
def test_netns_partitions_and_heals_a_directed_link() -> None:
    net = NetnsNetwork([1, 2], seed=3)
    net.setup()
    try:
        listener = socket.socket()
        listener.bind((net.bridge_ip, 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        net.link_ports = {(1, 2): port, (2, 1): port}
        assert _connects(net, 1, port)
        net.block([(1, 2)])  # one way: node 1's packets to that port are dropped
        assert not _connects(net, 1, port)
        assert _connects(net, 2, port)
        net.heal()
        assert _connects(net, 1, port)
        listener.close()
    finally:
        net.teardown()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert all(ns not in listed for ns in net.ns.values())


# -- the chaos clock hook ----------------------------------------------------------------


class _StubLoop:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


def test_chaos_clock_runs_the_node_clock_at_its_rate(tmp_path: Path) -> None:
    from pyxos.server.config import Config
    from pyxos.server.node import NodeServer

    config = Config(
        cluster_id="c",
        node_id=1,
        peers={1: ("127.0.0.1", 1)},
        client_port=0,
        data_dir=tmp_path,
    )
    server = NodeServer(config, clock_rate=1.04)
    loop = _StubLoop()
    server.clock.loop = loop  # type: ignore[assignment]
    server.clock.origin = loop.now
    loop.now = 110.0  # ten real seconds
    assert server.clock.now() == pytest.approx(110.4)
    assert server.clock.loop_time(server.clock.now()) == pytest.approx(110.0)
    with pytest.raises(ValueError, match="clock_rate"):
        NodeServer(config, clock_rate=3.0)


def test_serve_refuses_a_chaos_clock_out_of_range(tmp_path: Path) -> None:
    config = tmp_path / "n.toml"
    config.write_text(
        'cluster_id = "c"\nnode_id = 1\nclient_port = 0\n'
        f'data_dir = "{tmp_path / "d"}"\npeers = {{ "1" = "127.0.0.1:1" }}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "pyxos.server", "--config", str(config), "--chaos-clock", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--chaos-clock" in done.stderr and "Traceback" not in done.stderr


def test_clock_faults_keep_rates_within_the_drift_bound() -> None:
    from pyxos.chaos.schedule import CLOCK_SKEW

    rates = [
        f.amount for s in range(100) for f in make_schedule(s, 60, [1, 2, 3], kinds=("clock",))
    ]
    assert rates and all(abs(r - 1.0) <= CLOCK_SKEW for r in rates)
    assert (1 + CLOCK_SKEW) / (1 - CLOCK_SKEW) - 1 < 0.1  # the replica's default drift bound


def test_an_http_call_cancelled_in_flight_stays_in_the_history_as_unknown() -> None:
    from aiohttp import web

    from pyxos.chaos.run import _Workload
    from pyxos.localcluster import LocalCluster, LocalNode

    async def main() -> list[dict[str, object]]:
        started = asyncio.Event()

        async def hang(request: web.Request) -> web.Response:
            started.set()
            await asyncio.sleep(3600)
            return web.Response()

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", hang)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        cluster = LocalCluster(Path("/nonexistent"), [LocalNode(1, 1, 1, port)], "c")
        workload = _Workload(cluster, ChaosOptions(seed=5))
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(workload.http_client(0, session))
            await asyncio.wait_for(started.wait(), 10)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        return workload.history

    history = asyncio.run(main())
    assert len(history) == 1
    (op,) = history
    assert op["return"] is None and op["ok"] is None
