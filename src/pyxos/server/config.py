"""Node configuration: one validated ``Config`` from a TOML file plus overrides.

Theory of operation
-------------------
After uvicorn's ``Config``: every setting of a node lives in one frozen object, built
and validated before anything starts, so a typo fails at once with one clear line
instead of as a half-started node. ``Config.load(path, **overrides)`` reads a TOML file
(``tomllib``) and applies overrides (the CLI's ``--node-id`` and friends) on top;
``Config.from_mapping`` does the same for a dict. Every problem raises
:class:`ConfigError` whose message names the key and what is wrong; the CLI prints it
and exits with status 2, without a traceback.

The file format (every key but ``cluster_id``, ``node_id``, ``peers``, ``client_port``
and ``data_dir`` has a default)::

    cluster_id = "prod-kv"
    node_id = 1
    client_port = 7101          # binary client protocol; 0 picks a free port
    http_port = 8101            # optional: the HTTP API; 0 picks a free port
    data_dir = "/var/lib/pyxos/1"
    bind_host = "0.0.0.0"       # optional: defaults to this node's host in `peers`
    election_timeout = [0.3, 0.6]
    heartbeat_interval = 0.05
    window = 256
    wal_segment_bytes = 16777216
    snapshot_every = 10000
    snapshot_bytes = 16777216
    forward_requests = true
    max_connections = 1024      # per port (client, peer, HTTP); more are closed at once
    max_buffered_bytes = 67108864   # per port: unfinished frames of all its connections
    frame_timeout = 10.0        # seconds a started frame (HTTP body) may take to arrive
    client_idle_timeout = 300.0 # seconds a client connection may send nothing after Hello
    client_max_frame_bytes = 4194304  # largest client frame; longer: refused on its header
    tls_ca = "/etc/pyxos/ca.pem"      # optional, all three or none: mutual TLS between
    tls_cert = "/etc/pyxos/node1.pem" # nodes (and TLS on the client and HTTP ports);
    tls_key = "/etc/pyxos/node1.key"  # `pyxos certs init` makes them
    tokens = "/etc/pyxos/tokens.toml" # optional: client auth; or a table [tokens]
                                      # "<sha256 of a token>" = "read" | "write"
    app = "examples.counter:Counter"  # optional: the application, "module:Factory"
                                      # (default: the key-value store)
    quorum = { q1 = 4, q2 = 2 }  # optional (default: majorities): q1 + q2 > members;
                                 # one size alone: the smallest other. Same everywhere.
    preferred_leader = 2        # optional: leadership moves to it when it is caught up

    [peers]                     # every member, this node included: id = "host:port"
    1 = "10.0.0.1:7001"
    2 = "10.0.0.2:7001"
    3 = "10.0.0.3:7001"
"""

from __future__ import annotations

import dataclasses
import math
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyxos.core.quorum import FlexibleQuorum, quorum_sizes, quorum_system
from pyxos.net.codec import HEADER_BYTES, MAX_FRAME_BYTES
from pyxos.net.limits import (
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_CONNECTIONS,
)
from pyxos.net.tls import TlsError, TlsFiles, client_context, server_context
from pyxos.server.auth import TokenError, Tokens
from pyxos.server.quorumconf import check_quorum, flatten_quorum
from pyxos.statemachine.kv import MAX_KEY_BYTES, MAX_VALUE_BYTES
from pyxos.statemachine.loader import DEFAULT_APP, load_factory
from pyxos.statemachine.service import SNAPSHOT_BYTES, SNAPSHOT_EVERY

__all__ = [
    "DEFAULT_CLIENT_IDLE_TIMEOUT",
    "DEFAULT_CLIENT_MAX_FRAME_BYTES",
    "MIN_CLIENT_FRAME_BYTES",
    "Config",
    "ConfigError",
    "parse_address",
]

MIN_CLIENT_FRAME_BYTES = 2 * MAX_VALUE_BYTES + MAX_KEY_BYTES + 4096
"""The largest request a client may legitimately send (a cas with a value and an
expected value of ``MAX_VALUE_BYTES`` each), with room for its encoding."""

DEFAULT_CLIENT_MAX_FRAME_BYTES = 4 * 1024 * 1024
"""Default limit on a client frame: above every legitimate request, far below the
peer frame limit, so an unfinished client frame cannot hold much."""


DEFAULT_CLIENT_IDLE_TIMEOUT = 300.0
"""Seconds a binary client connection may stay silent after its ``Hello`` before the
node closes it (the client reconnects when it next sends; ZooKeeper's longest session
timeout is 40 s, HAProxy's usual client timeout a minute: five minutes keeps an idle
pool's connections without letting abandoned ones pile up to ``max_connections``)."""


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and why."""


_REQUIRED = ("cluster_id", "node_id", "peers", "client_port", "data_dir")


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:7001"`` for IPv6) into ``(host, port)``."""
    if not isinstance(text, str):
        raise ConfigError(f"{what}: expected a string 'host:port', got {text!r}")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what}: expected 'host:port', got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{what}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is not in 1..65535")
    return host, port


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of one node (see the module notes for the file format)."""

    cluster_id: str
    """Name of the cluster; every peer and client handshake must carry it."""
    node_id: int
    """This node's id (>= 1), one of ``peers``."""
    peers: Mapping[int, tuple[str, int]]
    """Every member, this node included: node id -> (host, peer port)."""
    client_port: int
    """TCP port of the binary client protocol (0: pick a free one)."""
    data_dir: Path
    """Where the write-ahead log lives."""
    http_port: int | None = None
    """TCP port of the HTTP API (None: off; 0: pick a free one)."""
    bind_host: str | None = None
    """Address the listeners bind; None: this node's host in ``peers``."""
    election_timeout: tuple[float, float] = (0.3, 0.6)
    """A follower that hears no leader for a random time in this range runs."""
    heartbeat_interval: float = 0.05
    """How often the leader sends heartbeats (below the election timeout)."""
    window: int = 256
    """Slots the leader keeps in flight at most."""
    wal_segment_bytes: int = 16 * 1024 * 1024
    """One WAL segment file's size; compaction deletes whole segments (a restart reads one more)."""
    snapshot_every: int = SNAPSHOT_EVERY
    """Take a state-machine snapshot (then compact) every this many applied slots."""
    snapshot_bytes: int = SNAPSHOT_BYTES
    """... or once this many bytes of slot values were applied since the last one."""
    forward_requests: bool = True
    """A follower forwards client requests to the leader (else it redirects the client)."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open connections each listening port (client, peer, HTTP) accepts at once; one
    more is closed at once and counted (``connections_refused``)."""
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    """Bytes of unfinished frames (HTTP: request bodies being read) all connections of
    one port may hold together; the connection that would go over is closed and counted
    (``buffer_budget_exceeded``). At least one peer frame (16 MiB): a node therefore
    holds at most three times this for all its ports."""
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT
    """Seconds a frame (an HTTP request body) may take to arrive once it has started;
    then its connection is closed and counted (``frame_timeouts``)."""
    client_idle_timeout: float = DEFAULT_CLIENT_IDLE_TIMEOUT
    """Seconds a binary client connection may send no frame after its ``Hello``; then
    it is closed and counted (``idle_timeouts``). Clients reconnect on their next
    command. (HTTP: an idle keep-alive connection gets ``frame_timeout``.)"""
    client_max_frame_bytes: int = DEFAULT_CLIENT_MAX_FRAME_BYTES
    """Largest frame a client may send, so also the most one client connection holds;
    a longer frame is refused on its 4-byte header before any of it is buffered
    (``oversized_frames``). Peers may send frames up to 16 MiB."""
    tls_ca: Path | None = None
    """PEM file of the cluster's CA certificate (TLS on: all three ``tls_*`` set)."""
    tls_cert: Path | None = None
    """PEM file of this node's certificate, signed by ``tls_ca``."""
    tls_key: Path | None = None
    """PEM file of the private key of ``tls_cert`` (keep it mode 0600)."""
    tokens: Tokens | None = None
    """Client authentication (``pyxos.server.auth``): the SHA-256 hashes of the bearer
    tokens and their roles; None: clients need no token."""
    app: str = DEFAULT_APP
    """The replicated application, as ``"module:Factory"`` (docs/architecture.md,
    *The application contract*); checked when the configuration is built: a path that
    does not import, or names no application, is a ``ConfigError``."""

    q1: int | None = None
    """Phase-1 (election) quorum size; None: a majority, or the smallest that meets
    ``q2`` (docs/architecture.md, *Flexible quorums*). Every member must agree."""
    q2: int | None = None
    """Phase-2 quorum size (accept, read-index, lease), likewise; ``q1 + q2 > n``."""
    preferred_leader: int | None = None
    """A member that should lead whenever it is up and caught up (leader transfer)."""

    def __post_init__(self) -> None:
        _validate(self)

    def quorum_system(self) -> FlexibleQuorum:
        """The quorum system of ``peers`` with this node's sizes (majorities by default)."""
        return quorum_system(self.peers, self.q1, self.q2)

    @property
    def quorum_sizes(self) -> tuple[int, int]:
        """``(q1, q2)`` as the node runs them (defaults filled in)."""
        return quorum_sizes(len(self.peers), self.q1, self.q2)

    @property
    def tls(self) -> TlsFiles | None:
        """This node's TLS files, or None when TLS is off."""
        if self.tls_ca is None:
            return None
        return TlsFiles(self.tls_ca, self.tls_cert, self.tls_key)

    def tls_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext] | None:
        """(peer server, peer dialer, client/HTTP server) SSL contexts; None: TLS off.

        The peer server requires a client certificate of the cluster CA (mutual TLS);
        the client and HTTP ports accept clients without one (they use tokens).
        """
        files = self.tls
        if files is None:
            return None
        try:
            return (
                server_context(files, require_client_cert=True),
                client_context(files),
                server_context(files, require_client_cert=False),
            )
        except TlsError as e:
            raise ConfigError(f"tls: {e}") from None

    @property
    def host(self) -> str:
        """The address the listeners bind."""
        return self.bind_host if self.bind_host is not None else self.peers[self.node_id][0]

    @property
    def peer_port(self) -> int:
        """This node's peer port (from ``peers``)."""
        return self.peers[self.node_id][1]

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> Config:
        """Read the TOML file at ``path``, apply ``overrides`` (None values are ignored)."""
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Config:
        """Build from a mapping of file keys (``peers`` values as ``"host:port"``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            raw = flatten_quorum(raw)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise ConfigError(f"missing required key {missing[0]!r}")
        values = dict(raw)
        values["peers"] = _parse_peers(raw["peers"])
        values["data_dir"] = Path(_typed(raw, "data_dir", str))
        values["cluster_id"] = _typed(raw, "cluster_id", str)
        values["node_id"] = _typed(raw, "node_id", int)
        values["client_port"] = _typed(raw, "client_port", int)
        if raw.get("http_port") is not None:
            values["http_port"] = _typed(raw, "http_port", int)
        if raw.get("bind_host") is not None:
            values["bind_host"] = _typed(raw, "bind_host", str)
        if "election_timeout" in raw:
            timeout = raw["election_timeout"]
            if (
                not isinstance(timeout, list | tuple)
                or len(timeout) != 2
                or not all(_is_number(t) for t in timeout)
            ):
                raise ConfigError(
                    f"election_timeout: expected [min, max] in seconds, got {timeout!r}"
                )
            values["election_timeout"] = (float(timeout[0]), float(timeout[1]))
        if "heartbeat_interval" in raw:
            if not _is_number(raw["heartbeat_interval"]):
                raise ConfigError(
                    f"heartbeat_interval: expected seconds, got {raw['heartbeat_interval']!r}"
                )
            values["heartbeat_interval"] = float(raw["heartbeat_interval"])
        for key in ("q1", "q2", "preferred_leader"):
            if raw.get(key) is not None:
                values[key] = _typed(raw, key, int)
        for key in (
            "window",
            "wal_segment_bytes",
            "snapshot_every",
            "snapshot_bytes",
            "max_connections",
            "max_buffered_bytes",
            "client_max_frame_bytes",
        ):
            if key in raw:
                values[key] = _typed(raw, key, int)
        if raw.get("tokens") is not None:
            source = raw["tokens"]
            if isinstance(source, Tokens):
                values["tokens"] = source
            elif isinstance(source, str | Mapping):
                try:
                    values["tokens"] = Tokens.load(source)
                except TokenError as e:
                    raise ConfigError(str(e)) from None
            else:
                raise ConfigError("tokens: expected a file path or a table of hash = role")
        for key in ("tls_ca", "tls_cert", "tls_key"):
            if raw.get(key) is not None:
                values[key] = Path(_typed(raw, key, str))
        for key in ("frame_timeout", "client_idle_timeout"):
            if key in raw:
                if not _is_number(raw[key]):
                    raise ConfigError(f"{key}: expected seconds, got {raw[key]!r}")
                values[key] = float(raw[key])
        if raw.get("app") is not None:
            values["app"] = _typed(raw, "app", str)
        if "forward_requests" in raw and not isinstance(raw["forward_requests"], bool):
            raise ConfigError(
                f"forward_requests: expected true or false, got {raw['forward_requests']!r}"
            )
        return cls(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _typed(raw: Mapping[str, Any], key: str, kind: type) -> Any:
    value = raw[key]
    if kind is int and isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
        # Overrides from the command line arrive as text. ASCII digits only: "²" and
        # "--5" pass str.isdigit() checks but int() rejects them.
        value = int(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _parse_peers(raw: object) -> dict[int, tuple[str, int]]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("peers: expected a table of node id = 'host:port', with every member")
    peers: dict[int, tuple[str, int]] = {}
    for key, text in raw.items():
        try:
            node = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"peers: node id {key!r} is not a number") from None
        if node < 1:
            raise ConfigError(f"peers: node id {node} must be >= 1")
        if node in peers:
            raise ConfigError(f"peers: duplicate node id {node} (as {key!r})")
        peers[node] = parse_address(text, f"peers.{key}")
    return peers


def _validate(c: Config) -> None:
    if not c.cluster_id:
        raise ConfigError("cluster_id: must not be empty")
    if c.node_id < 1:
        raise ConfigError(f"node_id: {c.node_id} must be >= 1")
    if c.node_id not in c.peers:
        raise ConfigError(
            f"node_id: {c.node_id} is not among the peers ({', '.join(map(str, sorted(c.peers)))})"
        )
    seen: dict[tuple[str, int], int] = {}
    for node, address in sorted(c.peers.items()):
        if address in seen:
            raise ConfigError(
                f"peers: nodes {seen[address]} and {node} share the address "
                f"{address[0]}:{address[1]}"
            )
        seen[address] = node
    for name in ("client_port", "http_port"):
        port = getattr(c, name)
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"{name}: {port} is not a port (0..65535; 0 picks a free one)")
    ports = [c.peer_port, c.client_port] + ([c.http_port] if c.http_port is not None else [])
    nonzero = [p for p in ports if p]
    if len(set(nonzero)) != len(nonzero):
        raise ConfigError(f"ports: peer, client and http ports must differ, got {ports}")
    lo, hi = c.election_timeout
    if not 0 < lo <= hi:
        raise ConfigError(f"election_timeout: need 0 < min <= max, got [{lo}, {hi}]")
    if not 0 < c.heartbeat_interval < lo:
        raise ConfigError(
            f"heartbeat_interval: {c.heartbeat_interval} must be positive and below the "
            f"election timeout minimum {lo}"
        )
    if c.window < 1:
        raise ConfigError(f"window: {c.window} must be >= 1")
    try:
        check_quorum(c.peers, c.q1, c.q2, c.preferred_leader)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        load_factory(c.app)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if c.snapshot_every < 1:
        raise ConfigError(f"snapshot_every: {c.snapshot_every} must be >= 1")
    if c.snapshot_bytes < 1:
        raise ConfigError(f"snapshot_bytes: {c.snapshot_bytes} must be >= 1")
    if c.wal_segment_bytes < 4096:
        raise ConfigError(f"wal_segment_bytes: {c.wal_segment_bytes} must be >= 4096")
    if c.max_connections < 1:
        raise ConfigError(f"max_connections: {c.max_connections} must be >= 1")
    if not 0 < c.frame_timeout < math.inf:
        raise ConfigError(f"frame_timeout: {c.frame_timeout} must be a finite number > 0 seconds")
    if not 0 < c.client_idle_timeout < math.inf:
        raise ConfigError(
            f"client_idle_timeout: {c.client_idle_timeout} must be a finite number > 0 seconds"
        )
    if not MIN_CLIENT_FRAME_BYTES <= c.client_max_frame_bytes <= MAX_FRAME_BYTES:
        raise ConfigError(
            f"client_max_frame_bytes: {c.client_max_frame_bytes} must be in "
            f"[{MIN_CLIENT_FRAME_BYTES}, {MAX_FRAME_BYTES}] (the largest client request, "
            "a cas of two 1 MiB values, must fit)"
        )
    tls_keys = {"tls_ca": c.tls_ca, "tls_cert": c.tls_cert, "tls_key": c.tls_key}
    if any(v is not None for v in tls_keys.values()):
        missing = [k for k, v in tls_keys.items() if v is None]
        if missing:
            raise ConfigError(f"{missing[0]}: TLS needs tls_ca, tls_cert and tls_key together")
        c.tls_contexts()  # reads and checks the files now: a bad one fails at start
    if c.max_buffered_bytes < MAX_FRAME_BYTES + HEADER_BYTES:
        raise ConfigError(
            f"max_buffered_bytes: {c.max_buffered_bytes} must be >= "
            f"{MAX_FRAME_BYTES + HEADER_BYTES} (one peer frame of the largest size must fit)"
        )
