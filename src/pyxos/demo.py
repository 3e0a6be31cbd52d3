"""``pyxos demo``: a 3-node cluster on loopback, a failover and a catch-up, narrated.

Theory of operation
-------------------
The demo is the README's main job and a smoke test of the whole product: it creates a
:class:`~pyxos.localcluster.LocalCluster` in a temporary directory (real processes,
real TCP, real fsync), writes and reads keys through the client library, SIGKILLs the
leader, waits for a new leader, checks that every acknowledged write is still
readable, writes more, restarts the killed node and waits until it has applied
everything the leader has, then stops every process with SIGTERM. Each step is printed
with its elapsed time. Any failure stops the demo with exit code 1; every process is
stopped in any case.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from pyxos.client.sync import Client
from pyxos.localcluster import LocalCluster

__all__ = ["run_demo"]

T = TypeVar("T")


class _Narrator:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.t0 = time.monotonic()

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        self.console.print(f"[dim]{elapsed:6.2f}s[/dim]  {text}")

    def timed(self, text: str, fn: Callable[[], T]) -> T:
        start = time.monotonic()
        result = fn()
        self.step(f"{text} [dim]({(time.monotonic() - start) * 1000:.0f} ms)[/dim]")
        return result


def run_demo(
    console: Console | None = None,
    keep_dir: Path | None = None,
    *,
    tls: bool = False,
    web: bool = False,
    open_browser: bool = True,
) -> int:
    """Run the demo; the process exit code (0: every check held).

    ``tls``: the cluster runs with mutual TLS between nodes and TLS on the client and
    HTTP ports (certificates made for it), and the client verifies the nodes.
    ``web``: show the live cluster page and wait for Enter before the failover and
    before the end (``open_browser``: open it in a browser too)."""
    console = console or Console()
    n = _Narrator(console)
    with tempfile.TemporaryDirectory(prefix="pyxos-demo-") as tmp:
        base = keep_dir or Path(tmp)
        cluster = LocalCluster.create(base / "cluster", 3, cluster_id="pyxos-demo", tls=tls)
        try:
            return _script(cluster, n, web=web, open_browser=open_browser)
        except Exception as e:  # the demo reports any failure plainly
            n.step(f"[red]demo failed: {type(e).__name__}: {e}[/red]")
            for node_id in cluster.nodes:
                log = cluster.base_dir / f"node-{node_id}.log"
                if log.exists():
                    tail = log.read_text(errors="replace").splitlines()[-5:]
                    console.print(f"[dim]node {node_id} log tail:[/dim]", *tail, sep="\n  ")
            return 1
        finally:
            stopped = cluster.stop(timeout=10.0)
            left = [i for i in cluster.nodes if cluster.pid(i) is not None]
            if stopped:
                n.step(f"stopped nodes {sorted(stopped)} with SIGTERM; processes left: {len(left)}")


def _wait_for_enter(n: _Narrator, what: str) -> None:
    n.step(f"[bold]press Enter to {what}[/bold]")
    with contextlib.suppress(EOFError):  # no input: go on at once
        input()


def _show_page(cluster: LocalCluster, n: _Narrator, leader: int, open_browser: bool) -> None:
    follower = min(i for i in cluster.nodes if i != leader)
    members = ",".join(f"{x.host}:{x.http_port}" for x in cluster.nodes.values())
    url = f"{cluster.nodes[follower].http_url}/?members={members}"
    n.step("live cluster page (every member's stream; the leader is killed next):")
    n.console.print(f"  {url}", soft_wrap=True, markup=False, highlight=False)
    if open_browser:
        import webbrowser

        webbrowser.open(url)


def _script(
    cluster: LocalCluster, n: _Narrator, *, web: bool = False, open_browser: bool = True
) -> int:
    ports = ", ".join(f"{x.node_id}:{x.client_port}" for x in cluster.nodes.values())
    tls = " with TLS (mutual between nodes)" if cluster.tls else ""
    n.step(
        f"starting a 3-node cluster on 127.0.0.1{tls} (client ports {ports}) in {cluster.base_dir}"
    )
    cluster.start()
    leader = n.timed("a leader is elected", lambda: cluster.wait_for_leader(15.0))
    n.step(f"node {leader} leads")

    client = Client(
        cluster.client_addresses(), cluster=cluster.cluster_id, timeout=10.0, ca=cluster.ca_file
    )
    try:
        acknowledged: dict[str, str] = {}
        for i in range(1, 6):
            key, value = f"config/{i}", f"v{i}"
            n.timed(f"put {key} = {value}", functools.partial(client.put, key, value))
            acknowledged[key] = value
        ok = n.timed("cas config/1: v1 -> v1b", lambda: client.cas("config/1", "v1", "v1b"))
        if not ok:
            raise AssertionError("cas with the right expected value failed")
        acknowledged["config/1"] = "v1b"
        got = n.timed("get config/1 (linearizable read)", lambda: client.get("config/1"))
        n.step(f"  -> {got!r}")
        if got != "v1b":
            raise AssertionError(f"read {got!r}, expected 'v1b'")

        if web:
            _show_page(cluster, n, leader, open_browser)
            _wait_for_enter(n, f"SIGKILL the leader, node {leader}")
        n.step(f"[bold]SIGKILL the leader, node {leader}[/bold]")
        killed_at = time.monotonic()
        cluster.kill(leader, signal.SIGKILL)
        survivors = [i for i in cluster.nodes if i != leader]
        new_leader = cluster.wait_for_leader(15.0, among=survivors, exclude=leader)
        n.step(
            f"node {new_leader} leads after {time.monotonic() - killed_at:.2f}s "
            "(a new ballot, phase 1 once, then re-proposal of what was accepted)"
        )
        n.timed("put after failover: config/6 = v6", lambda: client.put("config/6", "v6"))
        acknowledged["config/6"] = "v6"
        for key, value in sorted(acknowledged.items()):
            got = client.get(key)
            if got != value:
                raise AssertionError(
                    f"acknowledged write lost: {key} = {got!r}, expected {value!r}"
                )
        n.step(f"all {len(acknowledged)} acknowledged writes are readable from the new leader")

        n.step(f"restarting node {leader} (same data directory: its WAL is replayed)")
        cluster.start_node(leader)

        def caught_up() -> bool:
            mine = cluster.node_status(leader)
            theirs = cluster.node_status(new_leader)
            return bool(mine and theirs and mine.get("applied", -1) >= theirs.get("applied", 0))

        n.timed(
            f"node {leader} has caught up", lambda: cluster.wait_until(caught_up, 15.0, "catch-up")
        )
        status = cluster.node_status(leader) or {}
        n.step(
            f"  node {leader}: role {status.get('role')}, applied {status.get('applied')}, "
            f"keys {status.get('keys')}"
        )
        listed = client.list("config/")
        if dict(listed) != acknowledged:
            raise AssertionError(f"list returned {listed}, expected {sorted(acknowledged.items())}")
        n.step(f"list config/ -> {len(listed)} keys, all as acknowledged")
        if web:
            _wait_for_enter(n, "stop the cluster")
    finally:
        client.close()
    n.step("[green]demo passed[/green]: failover, no acknowledged write lost, catch-up")
    return 0
