"""Memory attack on a real ``pyxos serve`` node: many connections, unfinished frames.

Theory of operation
-------------------
Starts one real node process (``pyxos serve``, a one-node cluster in a temporary
directory, so it leads and serves on its own), then runs ``--rounds`` rounds of the
attack of issue 8, item 2: ``--connections`` connections to the client port, each
sending a valid client ``Hello`` and then a frame header declaring
``--declared-bytes`` followed by ``--frame-bytes`` bytes of body, never finishing the
frame. The attack writes in 1 MiB pieces with ``drain`` (so the attacker's own memory
stays small) and stops writing on a connection the node closed. Each connection that
sent everything is held open ``--hold`` seconds (watching for the node to close it),
then the attacker closes them all.

The node's resident set size (``VmRSS`` of its process, read from ``/proc``) is
sampled every 50 ms: the table gives it before each round, its peak during the round,
and after the round (``--settle`` seconds after the attacker closed every connection).
Throughout, a legitimate client writes and reads a key every 0.2 s; the table gives
how many of those operations failed and the slowest one, so "the node keeps serving"
is measured rather than assumed. The node's client-port counters (``/v1/status``,
``client_net``) show what the node did with the attack's connections.

Run (the issue's figures: 100 connections x 15 MB, 3 rounds):
``python bench/attack_memory.py --connections 100 --frame-bytes 15000000 --rounds 3``.
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyxos.client.aio import AsyncClient
from pyxos.net.codec import PROTOCOL_VERSION, Hello, encode_hello

CLUSTER = "attack-memory"
PIECE = 1024 * 1024


@dataclass
class Round:
    """What one round of the attack did to the node."""

    round: int
    rss_before_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    connections_opened: int
    connections_closed_by_node: int
    bytes_sent_mb: float
    attack_seconds: float
    legit_ops: int
    legit_failures: int
    legit_slowest_ms: float
    client_net: dict[str, int] = field(default_factory=dict)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _status(http_port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/status", timeout=5) as r:
        body: dict[str, object] = json.loads(r.read())
        return body


def _pyxos_command() -> list[str]:
    script = Path(sys.executable).with_name("pyxos")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "pyxos.server"]


class Node:
    """One ``pyxos serve`` process in its own temporary directory."""

    def __init__(self, extra_config: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pyxos-attack-"))
        peer, self.client_port, self.http_port = _free_ports(3)
        config = self.dir / "node.toml"
        config.write_text(
            f'cluster_id = "{CLUSTER}"\nnode_id = 1\nclient_port = {self.client_port}\n'
            f'http_port = {self.http_port}\ndata_dir = "{self.dir / "data"}"\n'
            f'{extra_config}\n[peers]\n1 = "127.0.0.1:{peer}"\n'
        )
        self.log = (self.dir / "node.log").open("wb")
        self.proc = subprocess.Popen(
            [*_pyxos_command(), "--config", str(config), "--init"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited: {(self.dir / 'node.log').read_text()}")
            try:
                if _status(self.http_port).get("role") == "leader":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("node did not become leader")
            time.sleep(0.05)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        text = (self.dir / "node.log").read_text(errors="replace")
        shutil.rmtree(self.dir, ignore_errors=True)
        return text


@dataclass
class _Attacker:
    """One attacking connection: what it sent, and whether the node closed it."""

    sent: int = 0
    closed_by_node: bool = False
    writer: asyncio.StreamWriter | None = None


async def _attack_one(
    port: int, hello: bytes, header: bytes, body: memoryview, hold: float
) -> _Attacker:
    """Open one connection, send one unfinished frame on it, keep it open ``hold`` s."""
    attacker = _Attacker()
    try:
        reader, attacker.writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        attacker.closed_by_node = True
        return attacker
    writer = attacker.writer
    try:
        writer.write(hello + header)
        for offset in range(0, len(body), PIECE):
            if reader.at_eof():
                attacker.closed_by_node = True
                break
            piece = body[offset : offset + PIECE]
            writer.write(piece)
            await asyncio.wait_for(writer.drain(), 60.0)
            attacker.sent += len(piece)
    except (OSError, TimeoutError):
        attacker.closed_by_node = True
    if not attacker.closed_by_node:
        # The node sends nothing on a client connection before a request completes:
        # end of stream (or a reset) within the hold time means the node closed it.
        try:
            attacker.closed_by_node = await asyncio.wait_for(reader.read(1), hold) == b""
        except TimeoutError:
            pass
        except OSError:
            attacker.closed_by_node = True
    return attacker


async def _legit_client(client_port: int, stop: asyncio.Event, out: list[float | None]) -> None:
    async with AsyncClient(
        [f"127.0.0.1:{client_port}"], cluster=CLUSTER, timeout=5.0, attempt_timeout=1.0
    ) as client:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await client.put("legit", str(i))
                ok = await client.get("legit") == str(i)
                out.append(time.monotonic() - started if ok else None)
            except Exception:
                out.append(None)
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


async def _sample_rss(pid: int, stop: asyncio.Event, peak: list[float]) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            peak[0] = max(peak[0], _rss_mb(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def _round(node: Node, number: int, args: argparse.Namespace) -> Round:
    pid = node.proc.pid
    before = _rss_mb(pid)
    hello = encode_hello(Hello(version=PROTOCOL_VERSION, cluster=CLUSTER, node=0, role="client"))
    header = struct.pack(">I", args.declared_bytes or args.frame_bytes + 1)
    body = memoryview(b"\x91" * args.frame_bytes)
    stop = asyncio.Event()
    peak = [before]
    legit: list[float | None] = []
    sampler = asyncio.create_task(_sample_rss(pid, stop, peak))
    client = asyncio.create_task(_legit_client(node.client_port, stop, legit))
    started = time.monotonic()
    attackers = await asyncio.gather(
        *(
            _attack_one(node.client_port, hello, header, body, args.hold)
            for _ in range(args.connections)
        )
    )
    attack_seconds = time.monotonic() - started
    writers = [a.writer for a in attackers if a.writer is not None]
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    await asyncio.sleep(args.settle)
    stop.set()
    await asyncio.gather(sampler, client)
    after = _rss_mb(pid)
    status = await asyncio.get_running_loop().run_in_executor(None, _status, node.http_port)
    net = status.get("client_net", {})
    ok = [x for x in legit if x is not None]
    return Round(
        round=number,
        rss_before_mb=round(before, 1),
        rss_peak_mb=round(peak[0], 1),
        rss_after_mb=round(after, 1),
        connections_opened=len(writers),
        connections_closed_by_node=sum(1 for a in attackers if a.closed_by_node),
        bytes_sent_mb=round(sum(a.sent for a in attackers) / 1e6, 1),
        attack_seconds=round(attack_seconds, 2),
        legit_ops=len(legit),
        legit_failures=len(legit) - len(ok),
        legit_slowest_ms=round(max(ok, default=0.0) * 1000, 1),
        client_net={k: v for k, v in sorted(net.items()) if v} if isinstance(net, dict) else {},
    )


def format_rounds(rounds: Sequence[Round]) -> str:
    """A markdown table of the rounds."""
    lines = [
        "| round | RSS before MB | RSS peak MB | RSS after MB | closed by node | "
        "sent MB | legit ops (failed) | slowest legit op ms |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.round} | {r.rss_before_mb} | {r.rss_peak_mb} | {r.rss_after_mb} | "
            f"{r.connections_closed_by_node}/{r.connections_opened} | {r.bytes_sent_mb} | "
            f"{r.legit_ops} ({r.legit_failures}) | {r.legit_slowest_ms} |"
        )
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> list[Round]:
    node = Node(args.config_extra)
    rounds: list[Round] = []
    log = ""
    try:
        await asyncio.get_running_loop().run_in_executor(None, node.wait_ready)
        await asyncio.sleep(1.0)  # let the fresh process settle before the first sample
        for number in range(1, args.rounds + 1):
            rounds.append(await _round(node, number, args))
    finally:
        log = node.stop()
    if args.show_log:
        print(log)
    tracebacks = log.count("Traceback")
    print(f"node log: {len(log.splitlines())} lines, {tracebacks} tracebacks")
    return rounds


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, run the attack, print the table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument(
        "--frame-bytes", type=int, default=15_000_000, help="body bytes sent per connection"
    )
    parser.add_argument(
        "--declared-bytes",
        type=int,
        default=0,
        help="frame length announced in the header (default: frame bytes + 1, never finished)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hold", type=float, default=1.0, help="seconds to hold the connections")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after closing them")
    parser.add_argument(
        "--config-extra", default="", help="extra TOML lines for the node's config file"
    )
    parser.add_argument("--show-log", action="store_true", help="print the node's log")
    parser.add_argument("--json", action="store_true", help="also print every round as JSON")
    args = parser.parse_args(argv)
    rounds = asyncio.run(_main(args))
    print(format_rounds(rounds))
    for r in rounds:
        print(f"round {r.round} client_net: {r.client_net}")
    if args.json:
        print(json.dumps([asdict(r) for r in rounds], indent=1))


if __name__ == "__main__":
    main()
