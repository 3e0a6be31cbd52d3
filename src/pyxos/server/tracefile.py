"""``pyxos serve --trace FILE``: a real node's side of a run, in the trace format.

Theory of operation
-------------------
The driver (``NodeServer``) calls the tracer when one is set: for every message stepped
into the node (``received``), every message it sends (``sent``), every record it writes
to its log (``persisted``), every entry it applies (``committed``) and after every
Ready it carried out (``driven``). The tracer writes the records of
docs/trace-format.md that one node can see: ``recv`` and ``send`` (with ``h``, a digest
of the message's content, so that ``pyxos view`` can pair one node's send with another
node's receive when it merges the files of several nodes), ``persist``, ``commit`` and
``state`` (written when the node's role, ballots or slots changed). Times are wall-clock
seconds (``time.time()``): the files of the nodes of one machine share that clock.

Bounded: after ``max_bytes`` the tracer writes one ``truncated`` record and nothing
more, so a forgotten ``--trace`` cannot fill a disk. Lines are buffered and flushed at
most every ``flush_every`` seconds and at :meth:`close`; a node killed with SIGKILL
loses at most that much of its trace. The tracer never raises into the driver: a
write that fails (disk full) ends the trace with one log line.

The format's name and version are repeated here (the server never imports the
simulator); a test checks that they match ``pyxos.sim.traceout``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import zlib
from collections.abc import Iterable
from typing import IO, Any

import msgspec

from pyxos.core.ballot import Ballot
from pyxos.core.messages import Entry, Message
from pyxos.core.ready import Persist, Send
from pyxos.statemachine.kv import Command, decode_batch

__all__ = ["TRACE_FORMAT", "TRACE_VERSION", "NodeTracer", "message_digest"]

TRACE_FORMAT = "pyxos-trace"
TRACE_VERSION = 1

logger = logging.getLogger("pyxos.server")
_encoder = msgspec.msgpack.Encoder()
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def message_digest(msg: Message) -> int:
    """A digest of a message's content: a send and its receipt have the same one."""
    return zlib.crc32(type(msg).__name__.encode() + _encoder.encode(msg))


def _text(value: bytes) -> str:
    """A slot value or command as text: KV commands spelled out, else UTF-8 or hex."""
    if not value:
        return "no-op"
    try:
        commands = decode_batch(value)
    except (msgspec.DecodeError, ValueError, TypeError):
        try:
            commands = [msgspec.msgpack.decode(value, type=Command)]
        except (msgspec.DecodeError, ValueError, TypeError):
            commands = []
    if commands:
        text = "; ".join(
            f"put {c.key}={c.value}"
            if c.op == "put"
            else f"cas {c.key} {c.expected}->{c.value}"
            if c.op == "cas"
            else f"{c.op} {c.key}"
            for c in commands
        )
    else:
        try:
            text = value.decode()
        except UnicodeDecodeError:
            text = value.hex()
    return text if len(text) <= 80 else text[:79] + "…"


def _plain(obj: Any) -> Any:
    if isinstance(obj, Ballot):
        return str(obj)
    if isinstance(obj, bytes):
        return _text(obj)
    if isinstance(obj, Entry):
        return [obj.slot, str(obj.ballot), _text(obj.value)]
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, msgspec.Struct):
        return {f: _plain(getattr(obj, f)) for f in obj.__struct_fields__}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


class NodeTracer:
    """Writes one node's trace to ``path`` (see the module notes)."""

    def __init__(
        self,
        path: str,
        node_id: int,
        members: Iterable[int],
        *,
        max_bytes: int = 64 * 1024 * 1024,
        flush_every: float = 0.2,
    ) -> None:
        self.node_id = node_id
        self.max_bytes = max_bytes
        self.flush_every = flush_every
        self.written = 0
        self.records = 0
        self.done = False
        self._last_flush = time.monotonic()
        self._state: dict[str, Any] = {}
        self._out: IO[str] | None = open(path, "w", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
        header = {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "source": "serve",
            "node": node_id,
            "replicas": sorted(members),
            "clients": [],
            "clock": "wall",
        }
        self._write(header, count=False)

    # -- the driver's calls --------------------------------------------------------

    def received(self, msgs: Iterable[Message]) -> None:
        """Messages stepped into the node now."""
        if self.done:
            return
        t = time.time()
        for msg in msgs:
            src = getattr(msg, "src", None)
            self._record(
                t,
                "recv",
                src=src,
                dst=self.node_id,
                type=type(msg).__name__,
                h=message_digest(msg),
            )

    def sent(self, send: Send) -> None:
        """A message leaving the node (to every destination of ``send``)."""
        if self.done:
            return
        t = time.time()
        msg = send.msg
        fields: dict[str, Any] = {"type": type(msg).__name__}
        for name in msg.__struct_fields__:
            if name == "src":
                continue
            value = getattr(msg, name)
            if name == "data" and isinstance(value, bytes):
                fields[name] = f"<{len(value)} bytes>"
            else:
                fields[name] = _plain(value)
        digest = message_digest(msg)
        for dst in send.to:
            self._record(t, "send", src=self.node_id, dst=dst, h=digest, msg=fields)

    def persisted(self, persist: Persist) -> None:
        """A record the node wrote to its log (durable after the next fsync)."""
        if self.done or not (persist.promised is not None or persist.accepted):
            return
        fields: dict[str, Any] = {}
        if persist.promised is not None:
            fields["promised"] = str(persist.promised)
        if persist.accepted:
            fields["accepted"] = [_plain(e) for e in persist.accepted]
        self._record(time.time(), "persist", node=self.node_id, **fields)

    def committed(self, entries: list[Entry]) -> None:
        """Chosen entries the node just applied."""
        if not self.done:
            self._record(
                time.time(), "commit", node=self.node_id, entries=[_plain(e) for e in entries]
            )

    def driven(self, node: Any) -> None:
        """The node after its Ready was carried out: its state, if it changed."""
        if self.done:
            return
        state = _node_state(node)
        if state and state != self._state:
            self._state = state
            self._record(time.time(), "state", node=self.node_id, **state)
        if time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    # -- output --------------------------------------------------------------------

    def _record(self, t: float, kind: str, **fields: Any) -> None:
        self._write({"i": self.records, "t": round(t, 6), "kind": kind, **fields})

    def _write(self, record: dict[str, Any], count: bool = True) -> None:
        out = self._out
        if out is None:
            return
        line = _dumps(record) + "\n"
        if count and self.written + len(line) > self.max_bytes:
            line = (
                _dumps(
                    {
                        "i": self.records,
                        "t": round(time.time(), 6),
                        "kind": "truncated",
                        "max_bytes": self.max_bytes,
                    }
                )
                + "\n"
            )
            self.done = True
        try:
            out.write(line)
        except OSError as e:
            logger.error("node %d: trace file write failed, tracing stops: %s", self.node_id, e)
            self.done = True
            self._close_quietly()
            return
        self.written += len(line)
        if count:
            self.records += 1
        if self.done:
            self.flush()

    def flush(self) -> None:
        """Push buffered lines to the file."""
        self._last_flush = time.monotonic()
        if self._out is not None:
            try:
                self._out.flush()
            except OSError as e:
                logger.error("node %d: trace file flush failed: %s", self.node_id, e)
                self.done = True
                self._close_quietly()

    def close(self) -> None:
        """Flush and close the file (the node is stopping)."""
        self.flush()
        self._close_quietly()

    def _close_quietly(self) -> None:
        out, self._out = self._out, None
        if out is not None:
            with contextlib.suppress(OSError):  # closing after a failed write
                out.close()


def _node_state(node: Any) -> dict[str, Any]:
    replica = getattr(node, "replica", None)
    if replica is None:
        return {}
    state = getattr(node, "state", None)
    return {
        "role": replica.role.value,
        "ballot": str(replica.ballot),
        "leader": replica.leader,
        "promised": str(replica.acceptor.promised),
        "chosen": replica.first_unchosen,
        "applied": getattr(state, "applied_slot", 0),
        "rebuilding": bool(replica.rebuilding),
    }
