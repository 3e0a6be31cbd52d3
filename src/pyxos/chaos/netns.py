"""Network namespaces for ``pyxos chaos --net netns``: real packet loss and partitions.

Theory of operation
-------------------
Needs root, ``ip`` (iproute2) and ``iptables``. Each node runs in a network namespace of
its own with one veth link to a bridge in the harness's namespace::

    harness ns:  bridge 10.231.N.1/24 ── veth ── ns node 1: eth0 10.231.N.11
                                      ── veth ── ns node 2: eth0 10.231.N.12 ...

(``N`` is drawn per run so that two runs never share addresses; the addresses exist
only inside namespaces this run creates, and everything is deleted at the end.) The
harness's clients reach the nodes over the bridge. Peer traffic still goes through
the harness's fault proxies, which listen on the bridge address: the kernel here has
no netem, so *delay* stays in the proxy, while *partitions* and *loss* are made by the
kernel: an ``iptables`` rule in the sending node's namespace drops the packets it
sends to the proxy port of that directed link, entirely (``-j DROP``) or at random
(``-m statistic --mode random --probability p``). TCP then retransmits, times out and
reconnects exactly as it would on a real lossy network.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterable

__all__ = ["NetnsError", "NetnsNetwork", "netns_available"]


class NetnsError(Exception):
    """The namespaces could not be set up (not root, a tool missing, a command failed)."""


def netns_available() -> str | None:
    """None if this process can build the namespaces; else the reason it cannot."""
    if os.geteuid() != 0:
        return "--net netns needs root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"--net netns needs the {tool!r} command"
    return None


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")


class NetnsNetwork:
    """The namespaces, veth links, bridge and iptables rules of one chaos run."""

    def __init__(self, nodes: Iterable[int], seed: int) -> None:
        self.ids = sorted(nodes)
        tag = f"{os.getpid() % 10000}{random.Random(seed).randrange(100)}"
        self.subnet = 2 + (os.getpid() + seed) % 250
        self.bridge = f"pxbr{tag}"[:15]
        self.bridge_ip = f"10.231.{self.subnet}.1"
        self.ns = {i: f"pyxos-{tag}-n{i}" for i in self.ids}
        self.ips = {i: f"10.231.{self.subnet}.{10 + i}" for i in self.ids}
        self._veths: list[str] = []
        # Directed link -> the proxy port the sender dials for it.
        self.link_ports: dict[tuple[int, int], int] = {}

    def launcher(self, node: int) -> list[str]:
        """The command prefix that runs a process inside ``node``'s namespace."""
        return ["ip", "netns", "exec", self.ns[node]]

    def setup(self) -> None:
        """Create the bridge, the namespaces and the links; raise NetnsError on failure."""
        reason = netns_available()
        if reason is not None:
            raise NetnsError(reason)
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i in self.ids:
                ns, host_end = self.ns[i], f"{self.bridge[:9]}h{i}"
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0",
                     "netns", ns)  # fmt: skip
                self._veths.append(host_end)
                _run("ip", "link", "set", host_end, "master", self.bridge)
                _run("ip", "link", "set", host_end, "up")
                _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.ips[i]}/24",
                     "dev", "eth0")  # fmt: skip
                _run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
                _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        except NetnsError:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Delete everything :meth:`setup` made (idempotent, never raises)."""
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        for veth in self._veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

    def _rule(self, pair: tuple[int, int], *match: str) -> None:
        src = pair[0]
        port = str(self.link_ports[pair])
        _run("ip", "netns", "exec", self.ns[src], "iptables", "-A", "OUTPUT", "-p", "tcp",
             "-d", self.bridge_ip, "--dport", port, *match, "-j", "DROP")  # fmt: skip

    def block(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Drop every packet of these directed links (a partition, one-way if so given)."""
        for pair in pairs:
            self._rule(pair)

    def lose(self, pairs: Iterable[tuple[int, int]], probability: float) -> None:
        """Drop each packet of these directed links with ``probability``."""
        for pair in pairs:
            self._rule(pair, "-m", "statistic", "--mode", "random", "--probability",
                       f"{probability:.3f}")  # fmt: skip

    def heal(self) -> None:
        """Remove every rule: all links deliver again."""
        for ns in self.ns.values():
            _run("ip", "netns", "exec", ns, "iptables", "-F", "OUTPUT")
