"""A local cluster of real ``pyxos`` node processes on loopback, for development.

Theory of operation
-------------------
``LocalCluster`` owns one directory: ``cluster.json`` (ids and ports), one TOML config
per node (``node-N.toml``), one data directory per node (``node-N/``), and per node a
log file and a pid file. Ports are picked free on 127.0.0.1 when the cluster is
created and kept from then on, so a node restarts where its peers expect it. Nodes run
as ``python -m pyxos.server`` in their own process group (``start_new_session``), so
they outlive the command that started them; ``stop`` finds them again by pid file.
Readiness and roles come from each node's ``GET /v1/status``. Everything here only
builds configurations and processes; the node itself is ``pyxos.server``.

With ``tls=True`` (``pyxos cluster start --tls``) ``create`` also makes a CA and a
certificate per node and one for clients in ``certs/`` (``pyxos.certs``) and writes
``tls_ca``/``tls_cert``/``tls_key`` into every config: the nodes talk mutual TLS, and
the client and HTTP ports speak TLS (``https``; ``ca_file`` is what clients trust).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyxos.core.quorum import quorum_sizes

__all__ = ["ClusterError", "LocalCluster", "LocalNode"]

HOST = "127.0.0.1"


class ClusterError(Exception):
    """The local cluster could not be created, started or reached."""


@dataclass(frozen=True, slots=True)
class LocalNode:
    """One node of a local cluster: its id and ports."""

    node_id: int
    peer_port: int
    client_port: int
    http_port: int
    host: str = HOST
    """The address the node listens on (loopback, or its network namespace's)."""
    tls: bool = False
    """Whether the node's ports speak TLS (its HTTP API is ``https``)."""
    joined: bool = False
    """Added at run time (``add_node``): its first start joins (``--join``)."""
    removed: bool = False
    """Removed from the cluster (``mark_removed``): ``start`` leaves it alone."""

    @property
    def client_address(self) -> str:
        """``host:port`` of the binary client protocol."""
        return f"{self.host}:{self.client_port}"

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP API."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.http_port}"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on loopback right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """Create, start, stop and inspect a cluster of node processes in ``base_dir``."""

    def __init__(self, base_dir: Path, nodes: list[LocalNode], cluster_id: str) -> None:
        self.base_dir = base_dir
        self.nodes = {n.node_id: n for n in nodes}
        self.cluster_id = cluster_id
        self.launch_prefix: dict[int, list[str]] = {}
        """Per node, a command that runs the node process (e.g. ``ip netns exec NS``)."""
        self.extra_args: dict[int, list[str]] = {}
        """Per node, more arguments for ``pyxos.server`` (e.g. ``--chaos-clock 1.03``)."""
        self._ssl: ssl.SSLContext | None = None
        self.token: str | None = None
        """A bearer token sent with every status request (nodes with ``tokens`` set)."""

    # -- creation --------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        base_dir: Path,
        size: int = 3,
        *,
        cluster_id: str = "pyxos-local",
        election_timeout: tuple[float, float] = (0.3, 0.6),
        heartbeat_interval: float = 0.05,
        snapshot_every: int = 10_000,
        hosts: Mapping[int, str] | None = None,
        tls: bool = False,
        app: str | None = None,
        q1: int | None = None,
        q2: int | None = None,
    ) -> LocalCluster:
        """Write the configuration of a new ``size``-node cluster into ``base_dir``.

        ``hosts`` gives a node its own listening address (default: 127.0.0.1).
        ``app``: the application every node serves, ``"module:Factory"`` (default: the
        KV store); the nodes import it from the directory they are started in.
        ``tls``: make certificates in ``base_dir/certs`` and turn TLS on (module notes).
        ``q1``/``q2``: flexible quorum sizes written into every config (default:
        majorities); sizes that do not intersect are refused here, before anything
        is written.
        """
        if size < 1:
            raise ClusterError("a cluster needs at least one node")
        quorum_line = ""
        if q1 is not None or q2 is not None:
            try:
                a, b = quorum_sizes(size, q1, q2)
            except ValueError as e:
                raise ClusterError(f"quorum: {e}") from None
            quorum_line = f"quorum = {{ q1 = {a}, q2 = {b} }}\n"
        base_dir.mkdir(parents=True, exist_ok=True)
        if (base_dir / "cluster.json").exists():
            raise ClusterError(f"{base_dir} already holds a cluster (cluster.json exists)")
        ports = free_ports(3 * size)
        where = hosts or {}
        nodes = [
            LocalNode(
                i + 1,
                ports[3 * i],
                ports[3 * i + 1],
                ports[3 * i + 2],
                where.get(i + 1, HOST),
                tls,
            )
            for i in range(size)
        ]
        tls_lines: dict[int, str] = {}
        if tls:
            from pyxos.certs import init_certs

            certs = init_certs(
                base_dir / "certs",
                size,
                hosts=sorted({n.host for n in nodes} - {HOST}),
                cluster=cluster_id,
            )
            for n in nodes:
                cert, key = certs.nodes[n.node_id]
                tls_lines[n.node_id] = (
                    f'tls_ca = "{certs.ca}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
                )
        cluster = cls(base_dir, nodes, cluster_id)
        peers = ", ".join(f'"{n.node_id}" = "{n.host}:{n.peer_port}"' for n in nodes)
        for n in nodes:
            (base_dir / f"node-{n.node_id}.toml").write_text(
                f'cluster_id = "{cluster_id}"\n'
                f"node_id = {n.node_id}\n"
                f'data_dir = "{base_dir / f"node-{n.node_id}"}"\n'
                f"client_port = {n.client_port}\n"
                f"http_port = {n.http_port}\n"
                f"election_timeout = [{election_timeout[0]}, {election_timeout[1]}]\n"
                f"heartbeat_interval = {heartbeat_interval}\n"
                f"snapshot_every = {snapshot_every}\n"
                f"{tls_lines.get(n.node_id, '')}"
                + (f"app = {json.dumps(app)}\n" if app is not None else "")
                + quorum_line
                + f"peers = {{ {peers} }}\n"
            )
        cluster._write_meta()
        return cluster

    def _write_meta(self) -> None:
        meta = {
            "cluster_id": self.cluster_id,
            "nodes": [dataclasses.asdict(n) for n in self.nodes.values()],
        }
        tmp = self.base_dir / "cluster.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.base_dir / "cluster.json")

    def add_node(self) -> LocalNode:
        """Write the config of a new node (the next id never used here, fresh ports)
        that joins the running cluster on its first start; its settings are the
        lowest-numbered node's. The caller adds it to the membership (``pyxos member
        add``) before it starts (``start_node``)."""
        import tomllib

        model_id = min(self.nodes)
        try:
            model = tomllib.loads((self.base_dir / f"node-{model_id}.toml").read_text())
        except (OSError, ValueError) as e:
            raise ClusterError(f"cannot read node-{model_id}.toml: {e}") from None
        node_id = max(self.nodes) + 1
        peer, client, http = free_ports(3)
        node = LocalNode(node_id, peer, client, http, HOST, self.tls, joined=True)
        lo, hi = model.get("election_timeout", (0.3, 0.6))
        lines = [
            f"cluster_id = {json.dumps(self.cluster_id)}",
            f"node_id = {node_id}",
            f"data_dir = {json.dumps(str(self.data_dir(node_id)))}",
            f"client_port = {client}",
            f"http_port = {http}",
            f"election_timeout = [{lo}, {hi}]",
            f"heartbeat_interval = {model.get('heartbeat_interval', 0.05)}",
            f"snapshot_every = {model.get('snapshot_every', 10_000)}",
        ]
        if "app" in model:
            lines.append(f"app = {json.dumps(model['app'])}")
        if self.tls:  # a certificate of its own, signed by the cluster's CA
            from pyxos.certs import add_node_cert

            certs = self.base_dir / "certs"
            cert, key = add_node_cert(certs, node_id, cluster=self.cluster_id)
            lines.append(f'tls_ca = "{certs / "ca.pem"}"')
            lines.append(f'tls_cert = "{cert}"\ntls_key = "{key}"')
        # Only itself: the members and the founding configuration come from the
        # cluster when it joins (server.peerbook).
        lines.append(f'peers = {{ "{node_id}" = "{HOST}:{peer}" }}')
        (self.base_dir / f"node-{node_id}.toml").write_text("\n".join(lines) + "\n")
        self.nodes[node_id] = node
        self._write_meta()
        return node

    def mark_removed(self, node_id: int) -> None:
        """Record that ``node_id`` left the cluster: ``start`` no longer starts it."""
        node = self.nodes.get(node_id)
        if node is not None and not node.removed:
            self.nodes[node_id] = dataclasses.replace(node, removed=True)
            self._write_meta()

    @property
    def members(self) -> list[int]:
        """The ids of the nodes not removed."""
        return [i for i, n in self.nodes.items() if not n.removed]

    @classmethod
    def load(cls, base_dir: Path) -> LocalCluster:
        """The cluster described by ``base_dir/cluster.json``."""
        try:
            meta = json.loads((base_dir / "cluster.json").read_text())
            nodes = [LocalNode(**n) for n in meta["nodes"]]
            return cls(base_dir, nodes, meta["cluster_id"])
        except FileNotFoundError:
            raise ClusterError(f"no cluster in {base_dir} (no cluster.json)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ClusterError(f"{base_dir}/cluster.json is not valid: {e}") from None

    # -- processes -------------------------------------------------------------------

    def _pid_file(self, node_id: int) -> Path:
        return self.base_dir / f"node-{node_id}.pid"

    def pid(self, node_id: int) -> int | None:
        """The pid of a running node process, or None."""
        try:
            pid = int(self._pid_file(node_id).read_text())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        if _is_zombie(pid):
            return None
        return pid

    def start_node(self, node_id: int) -> int:
        """Start one node process (a new data directory is initialized); its pid."""
        if node_id not in self.nodes:
            raise ClusterError(f"no node {node_id} in this cluster")
        running = self.pid(node_id)
        if running is not None:
            return running
        cmd = [
            *self.launch_prefix.get(node_id, []),
            sys.executable,
            "-m",
            "pyxos.server",
            "--config",
            str(self.base_dir / f"node-{node_id}.toml"),
            *self.extra_args.get(node_id, []),
        ]
        node = self.nodes[node_id]
        if node.joined and not self.has_run(node_id):
            # Its first start: join through a running member (server.peerbook).
            via = [i for i in self.members if i != node_id and self.pid(i) is not None]
            if not via:
                raise ClusterError(f"node {node_id} joins through a running member: none is")
            cmd += ["--join", self.nodes[via[0]].http_url]
        elif not self._bootstrapped() and not self.has_run(node_id):
            # Only the first start of the cluster initializes empty directories: after
            # that, an empty directory is a wiped disk, and the node must rebuild. (A
            # node started with --init on a wiped disk would rebuild too, after asking
            # its peers, but the restart path never relies on that.)
            cmd.append("--init")
        log = open(self.base_dir / f"node-{node_id}.log", "ab")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pid_file(node_id).write_text(f"{proc.pid}\n")
        return proc.pid

    def data_dir(self, node_id: int) -> Path:
        """The data directory of one node."""
        return self.base_dir / f"node-{node_id}"

    def has_run(self, node_id: int) -> bool:
        """True if the node's data directory exists and holds anything: it ran before."""
        path = self.data_dir(node_id)
        return path.is_dir() and any(path.iterdir())

    def command_line(self, node_id: int) -> list[str] | None:
        """The command line of a running node process (as ``ps`` shows it), or None."""
        pid = self.pid(node_id)
        if pid is None:
            return None
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]

    def wipe(self, node_id: int) -> None:
        """Delete a (stopped) node's data directory, as a lost disk would."""
        import shutil

        if self.pid(node_id) is not None:
            raise ClusterError(f"node {node_id} is running: stop it before wiping its disk")
        shutil.rmtree(self.data_dir(node_id), ignore_errors=True)

    def start(self) -> None:
        """Start every node that is not running (the first time: bootstrap them)."""
        for node_id in self.members:
            self.start_node(node_id)
        self._mark_bootstrapped()

    def _bootstrapped(self) -> bool:
        return (self.base_dir / "bootstrapped").exists()

    def _mark_bootstrapped(self) -> None:
        (self.base_dir / "bootstrapped").touch()

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` to a node process; False if it was not running."""
        pid = self.pid(node_id)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if sig == signal.SIGKILL:
            _wait_gone(pid, 5.0)
            self._pid_file(node_id).unlink(missing_ok=True)
        return True

    def stop(self, timeout: float = 10.0) -> list[int]:
        """SIGTERM every node, wait for them, SIGKILL stragglers; the ids stopped."""
        stopped = []
        pids = {i: p for i in self.nodes if (p := self.pid(i)) is not None}
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node_id, pid in pids.items():
            if not _wait_gone(pid, max(0.0, deadline - time.monotonic())):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5.0)
            self._pid_file(node_id).unlink(missing_ok=True)
            stopped.append(node_id)
        return stopped

    # -- status ----------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        """Whether the cluster runs with TLS on (``create(tls=True)``)."""
        return any(n.tls for n in self.nodes.values())

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate clients must trust (None: TLS off)."""
        return self.base_dir / "certs" / "ca.pem" if self.tls else None

    @property
    def client_cert(self) -> tuple[Path, Path] | None:
        """A client certificate and key made with the cluster's (None: TLS off)."""
        certs = self.base_dir / "certs"
        return (certs / "client.pem", certs / "client.key") if self.tls else None

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def node_status(self, node_id: int, timeout: float = 0.5) -> dict[str, Any] | None:
        """``GET /v1/status`` of one node, or None if it does not answer."""
        url = self.nodes[node_id].http_url + "/v1/status"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            context = self._ssl_context()
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
                data = json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def status(self) -> dict[int, dict[str, Any] | None]:
        """Every node's status (None for a node that does not answer)."""
        return {i: self.node_status(i) for i in self.nodes}

    def leader(self, among: list[int] | None = None) -> int | None:
        """The node that reports itself leader and is followed by a majority, if any."""
        ids = among if among is not None else self.members
        statuses = {i: self.node_status(i) for i in ids}
        for i, st in statuses.items():
            if st is not None and st.get("role") == "leader":
                followers = sum(1 for s in statuses.values() if s and s.get("leader") == i)
                if followers * 2 > len(self.members):
                    return i
        return None

    def wait_for_leader(
        self, timeout: float, among: list[int] | None = None, exclude: int | None = None
    ) -> int:
        """Poll until a leader (not ``exclude``) is established; its id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader(among)
            if leader is not None and leader != exclude:
                return leader
            time.sleep(0.02)
        raise ClusterError(f"no leader within {timeout:.1f}s")

    def wait_until(self, predicate: Any, timeout: float, what: str) -> None:
        """Poll ``predicate()`` until true, or raise ClusterError naming ``what``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise ClusterError(f"timed out after {timeout:.1f}s waiting for {what}")

    def client_addresses(self) -> list[str]:
        """``host:port`` of every node's client port."""
        return [n.client_address for n in self.nodes.values()]


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _is_zombie(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
