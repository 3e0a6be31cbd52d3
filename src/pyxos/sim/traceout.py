"""Traces as data: a simulated run written as JSON lines (``--trace-out FILE.jsonl``).

Theory of operation
-------------------
The simulator hands every event of a run, as it happens, to its ``tap``
(:class:`~pyxos.sim.world.Simulator`): the events of its own trace (deliveries, drops,
commits, crashes, partitions, disk faults) and the ones only a trace file needs (every
send, every duplicate, every timer, every write to a node's log, every time a node
was driven). A :class:`TraceRecorder`
attached as that tap turns them into plain records, one a line in the file:

- messages get an id at their send; the delivery, drop or loss of the same message
  names that id (the simulator passes the very message object along, so a send is
  found again by ``(id(message), destination)``, oldest first);
- after each time a node was driven, the recorder reads the node's protocol state
  (role, ballot, leader, promised ballot, first unchosen and applied slot) and writes
  a ``state`` record only when it changed; what the node wrote to its log (a promise,
  accepted entries) is a ``persist`` record;
- like :class:`~pyxos.check.invariants.ChosenMonitor`, it watches Accept and Accepted
  go by and writes a ``chosen`` record when a quorum accepted a value in one ballot;
- a timer is written only when it made its node do something (heartbeats and
  elections, not the idle ticks);
- the client history (calls and returns) and the verdict are merged in when the run
  ends (:meth:`TraceRecorder.finish`); a violation names the records of the two
  conflicting facts when it can tell them (two values chosen, or committed, at one
  slot).

The format is versioned (:data:`TRACE_VERSION`, the ``version`` field of the header
line) and documented in docs/trace-format.md; ``pyxos view`` reads it. The recorder
reads nodes through duck typing (a :class:`~pyxos.statemachine.service.ServiceNode`,
a :class:`~pyxos.core.synod.SynodNode`), so it needs no change when they do.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable
from typing import IO, Any

import msgspec

from pyxos.check.history import AppOperation
from pyxos.core.ballot import Ballot
from pyxos.core.messages import Accept, Accepted, Entry, Message
from pyxos.core.quorum import QuorumSystem
from pyxos.core.ready import Persist
from pyxos.sim.world import Simulator, TraceEvent

__all__ = ["TRACE_FORMAT", "TRACE_VERSION", "TraceRecorder", "kv_value_text", "plain_value_text"]

TRACE_FORMAT = "pyxos-trace"
"""The ``format`` field of a trace file's header line."""
TRACE_VERSION = 1
"""The ``version`` field of a trace file's header line; bumped on any incompatible change."""

ValueText = Callable[[bytes], str]

_VALUE_WIDTH = 120


def plain_value_text(value: bytes) -> str:
    """A slot value as text: UTF-8 when it is, else hex (shortened)."""
    if not value:
        return "no-op"
    try:
        text = value.decode()
    except UnicodeDecodeError:
        text = value.hex()
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"


def kv_value_text(value: bytes) -> str:
    """A KV slot value (a batch of commands) or a client request's command as text,
    e.g. ``put k1=c1001-3``."""
    from pyxos.statemachine.kv import Command, decode_batch

    if not value:
        return "no-op"
    try:
        commands = decode_batch(value)
    except (msgspec.DecodeError, ValueError, TypeError):
        try:  # a client request carries one command, not a batch
            commands = [msgspec.msgpack.decode(value, type=Command)]
        except (msgspec.DecodeError, ValueError, TypeError):
            return plain_value_text(value)
    parts = []
    for c in commands:
        if c.op == "put":
            parts.append(f"put {c.key}={c.value}")
        elif c.op == "cas":
            parts.append(f"cas {c.key} {c.expected}->{c.value}")
        else:
            parts.append(f"{c.op} {c.key}")
    text = "; ".join(parts)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"


def app_value_text(value: bytes) -> str:
    """A slot value of any application (a batch of ``(client, seq, command)``) or a
    client request's command as text: each command msgpack-decoded when it is msgpack
    (a replicated object's call reads ``lock.acquire('c1001', 3)``), else as
    :func:`plain_value_text` shows bytes."""
    from pyxos.statemachine.replicated import decode_batch

    if not value:
        return "no-op"
    try:
        commands = [command for _, _, command in decode_batch(value)]
    except (msgspec.DecodeError, ValueError, TypeError):
        commands = [value]
    text = "; ".join(_command_text(c) for c in commands)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"


def _command_text(command: bytes) -> str:
    try:
        call = msgspec.msgpack.decode(command)
    except (msgspec.DecodeError, ValueError, TypeError):
        return plain_value_text(command)
    match call:
        case [str(name), str(method), list(args)]:
            return f"{name}.{method}({', '.join(map(repr, args))})"
        case _:
            return repr(call)


def _ballot(b: Ballot | None) -> str | None:
    return None if b is None else str(b)


class TraceRecorder:
    """Collects a run's records from a simulator's tap; :meth:`write` makes the file.

    ``attach(sim)`` before the run's nodes are added; ``finish(...)`` when it is over.
    """

    def __init__(
        self,
        *,
        source: str,
        seed: int,
        replicas: Iterable[int],
        quorum: QuorumSystem | None = None,
        value_text: ValueText = plain_value_text,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.replicas = sorted(replicas)
        self.header: dict[str, Any] = {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "source": source,
            "seed": seed,
            "replicas": self.replicas,
            "clients": [],
            **(meta or {}),
        }
        self.records: list[dict[str, Any]] = []
        self.quorum = quorum
        self.value_text = value_text
        self._sim: Simulator | None = None
        self._next_msg = 0
        self._in_flight: dict[tuple[int, int], tuple[Message, deque[int]]] = {}
        self._state: dict[int, dict[str, Any]] = {}
        self._tick: dict[int, int] = {}
        self._proposed: dict[tuple[int, Ballot], bytes] = {}
        self._votes: dict[tuple[int, Ballot], set[int]] = {}
        self._chosen: set[tuple[int, Ballot]] = set()
        self._values: dict[bytes, str] = {}

    # -- attaching -----------------------------------------------------------------

    def attach(self, sim: Simulator) -> None:
        """Become ``sim``'s tap (one recorder per simulator)."""
        self._sim = sim
        sim.tap = self.on_event

    # -- records -------------------------------------------------------------------

    def _add(self, t: float, kind: str, **fields: Any) -> int:
        index = len(self.records)
        record = {"i": index, "t": round(t, 9), "kind": kind}
        record.update(fields)
        self.records.append(record)
        return index

    def _text(self, value: bytes) -> str:
        known = self._values.get(value)
        if known is None:
            known = self._values[value] = self.value_text(value)
        return known

    def _plain(self, obj: Any) -> Any:
        if isinstance(obj, Ballot):
            return str(obj)
        if isinstance(obj, bytes):
            return self._text(obj)
        if isinstance(obj, Entry):
            return [obj.slot, str(obj.ballot), self._text(obj.value)]
        if isinstance(obj, (list, tuple)):
            return [self._plain(x) for x in obj]
        if isinstance(obj, msgspec.Struct):
            return {f: self._plain(getattr(obj, f)) for f in obj.__struct_fields__}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        return repr(obj)

    def _message(self, msg: Message) -> dict[str, Any]:
        fields: dict[str, Any] = {"type": type(msg).__name__}
        for name in msg.__struct_fields__:
            if name == "src":
                continue
            value = getattr(msg, name)
            if name == "data" and isinstance(value, bytes):
                fields[name] = f"<{len(value)} bytes>"
            else:
                fields[name] = self._plain(value)
        return fields

    # -- the tap -------------------------------------------------------------------

    def on_event(self, event: TraceEvent) -> None:
        """Take one event from the simulator (its ``tap``)."""
        t, kind, a, b, detail = event
        if kind == "send":
            self._on_send(t, a, b, detail)
        elif kind == "dup":
            self._on_dup(t, a, b, detail)
        elif kind in ("recv", "drop", "lost"):
            self._on_arrival(t, kind, b, detail)
        elif kind == "tick":
            self._tick[a] = self._add(t, "timer", node=a)
        elif kind == "persist":
            self._on_persist(t, a, detail)
        elif kind == "ready":
            self._on_ready(t, a)
        elif kind == "commit":
            self._add(
                t,
                "commit",
                node=a,
                entries=[[e.slot, str(e.ballot), self._text(e.value)] for e in detail],
            )
        elif kind in ("crash", "restart", "corrupt", "wipe-init", "fsync-fail"):
            self._add(t, kind, node=a)
            if kind != "restart":
                self._state.pop(a, None)
        elif kind == "pause":
            self._add(t, kind, node=a, duration=detail)
        elif kind == "clock":
            self._add(t, kind, node=a, rate=detail)
        elif kind == "snapshot-fail":
            self._add(t, kind, node=a, slot=detail)
        elif kind == "partition":
            self._add(t, kind, groups=detail)
        elif kind == "bridge":
            self._add(t, kind, node=a, groups=detail)
        elif kind == "heal":
            self._add(t, kind)
        else:
            self._add(t, kind, node=a, detail=self._plain(detail))

    def _on_send(self, t: float, src: int, dst: int, msg: Message) -> None:
        self._note_client(src)
        self._note_client(dst)
        mid = self._next_msg
        self._next_msg += 1
        key = (id(msg), dst)
        slot = self._in_flight.get(key)
        if slot is None:
            self._in_flight[key] = (msg, deque([mid]))
        else:
            slot[1].append(mid)
        self._add(t, "send", src=src, dst=dst, m=mid, msg=self._message(msg))
        self._watch_chosen(t, msg)

    def _on_dup(self, t: float, src: int, dst: int, msg: Message) -> None:
        pending = self._in_flight.get((id(msg), dst))
        if pending is None or not pending[1]:
            return
        mid = pending[1][-1]
        pending[1].append(mid)  # the copy arrives (or not) under the same id
        self._add(t, "dup", src=src, dst=dst, m=mid)

    def _on_arrival(self, t: float, kind: str, dst: int, msg: Message) -> None:
        key = (id(msg), dst)
        pending = self._in_flight.get(key)
        mid = None
        if pending is not None and pending[1]:
            mid = pending[1].popleft()
            if not pending[1]:
                del self._in_flight[key]
        src = getattr(msg, "src", None)
        self._add(t, kind, src=src, dst=dst, m=mid, type=type(msg).__name__)

    def _note_client(self, node: int) -> None:
        if node not in self.replicas and node not in self.header["clients"]:
            self.header["clients"].append(node)

    def _watch_chosen(self, t: float, msg: Message) -> None:
        if self.quorum is None:
            return
        if isinstance(msg, Accept):
            for i, value in enumerate(msg.values):
                key = (msg.slot + i, msg.ballot)
                self._proposed.setdefault(key, value)
                self._check_chosen(t, key)
        elif isinstance(msg, Accepted):
            for i in range(msg.count):
                key = (msg.slot + i, msg.ballot)
                self._votes.setdefault(key, set()).add(msg.src)
                self._check_chosen(t, key)

    def _check_chosen(self, t: float, key: tuple[int, Ballot]) -> None:
        assert self.quorum is not None
        if key in self._chosen:
            return
        value = self._proposed.get(key)
        if value is None or not self.quorum.is_phase2_quorum(self._votes.get(key, ())):
            return
        self._chosen.add(key)
        self._add(
            t,
            "chosen",
            slot=key[0],
            ballot=str(key[1]),
            value=self._text(value),
            by=sorted(self._votes[key]),
        )

    def _on_persist(self, t: float, node_id: int, persist: Persist) -> None:
        if node_id not in self.replicas:
            return
        fields: dict[str, Any] = {}
        if persist.promised is not None:
            fields["promised"] = str(persist.promised)
        if persist.accepted:
            fields["accepted"] = [
                [e.slot, str(e.ballot), self._text(e.value)] for e in persist.accepted
            ]
        if fields:
            self._add(t, "persist", node=node_id, **fields)

    def _on_ready(self, t: float, node_id: int) -> None:
        """A node was driven: write its state if it changed; drop the timer record
        of a tick that made it do nothing."""
        tick = self._tick.pop(node_id, None)
        changed = False
        if node_id in self.replicas:
            sim = self._sim
            node = sim.node(node_id) if sim is not None else None
            state = node_state(node)
            changed = bool(state) and state != self._state.get(node_id)
        if tick is not None and not changed and tick == len(self.records) - 1:
            self.records.pop()  # an idle tick: nothing to show
        if changed:
            self._state[node_id] = state
            self._add(t, "state", node=node_id, **state)

    # -- the end -------------------------------------------------------------------

    def finish(
        self,
        *,
        history: Iterable[Any] = (),
        violation: Any = None,
        replay: str | None = None,
        end: float | None = None,
    ) -> None:
        """Merge in the client history (KV ``Operation`` s, or ``AppOperation`` s of
        any application, whose calls carry ``input`` instead of ``key``, ``value`` and
        ``expected``) and the verdict."""
        if replay:
            self.header["replay"] = replay
        calls: list[tuple[float, int, dict[str, Any]]] = []
        for n, op in enumerate(history):
            what: dict[str, Any] = {"client": op.client, "op": op.op}
            if isinstance(op, AppOperation):
                what["input"] = None if op.input is msgspec.UNSET else op.input
                output = None if op.output is msgspec.UNSET else op.output
            else:
                what.update(key=op.key, value=op.value, expected=op.expected)
                output = op.output
            what["op_id"] = n
            calls.append((op.call / 1e9, 0, {"kind": "call", **what}))
            if op.return_ is not None:
                result = {"ok": op.ok, "output": output}
                calls.append((op.return_ / 1e9, 1, {"kind": "return", **what, **result}))
        if calls:
            self._merge(calls)
        if end is None:
            end = self.records[-1]["t"] if self.records else 0.0
        if violation is not None:
            facts = self._facts(str(getattr(violation, "detail", "")))
            self._add(
                end,
                "violation",
                check=getattr(violation, "check", "violation"),
                detail=str(getattr(violation, "detail", violation)),
                facts=facts,
            )
        self.header["clients"] = sorted(self.header["clients"])
        self.header["events"] = len(self.records)

    def _merge(self, extra: list[tuple[float, int, dict[str, Any]]]) -> None:
        extra.sort(key=lambda x: (x[0], x[1]))
        merged: list[dict[str, Any]] = []
        j = 0
        for record in self.records:
            while j < len(extra) and extra[j][0] <= record["t"]:
                t, _, fields = extra[j]
                merged.append({"t": round(t, 9), **fields})
                j += 1
            merged.append(record)
        for t, _, fields in extra[j:]:
            merged.append({"t": round(t, 9), **fields})
        # Renumber (message ids stay; a record's index is its position), "i" first.
        for index, record in enumerate(merged):
            merged[index] = {"i": index, **{k: v for k, v in record.items() if k != "i"}}
        self._tick.clear()
        self.records = merged

    def _facts(self, detail: str) -> list[int]:
        """The records of the two conflicting facts a violation names, when it names a
        slot whose chosen (or committed) values differ."""
        import re

        found = re.search(r"slot (\d+)", detail)
        if found is None:
            return []
        slot = int(found.group(1))
        for kind in ("chosen", "commit"):
            first: tuple[int, str] | None = None
            for record in self.records:
                if record["kind"] != kind:
                    continue
                if kind == "chosen":
                    values = [record["value"]] if record["slot"] == slot else []
                else:
                    values = [v for s, _, v in record["entries"] if s == slot]
                for value in values:
                    if first is None:
                        first = (record["i"], value)
                    elif value != first[1]:
                        return [first[0], record["i"]]
        return []

    # -- output --------------------------------------------------------------------

    def write(self, out: IO[str]) -> None:
        """Write the header line and every record, one JSON object a line."""
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        out.write(dumps(self.header) + "\n")
        for record in self.records:
            out.write(dumps(record) + "\n")

    def write_file(self, path: str) -> None:
        """Write the trace to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            self.write(f)


def node_state(node: Any) -> dict[str, Any]:
    """The protocol state of a live node, read by duck typing: a ServiceNode (its
    replica and store), a bare Replica, or a SynodNode; {} for anything else."""
    if node is None:
        return {}
    replica = getattr(node, "replica", node)
    role = getattr(replica, "role", None)
    acceptor = getattr(replica, "acceptor", None)
    promised = getattr(acceptor, "promised", None)
    if role is not None and hasattr(replica, "first_unchosen"):
        store = getattr(node, "store", None)
        state: dict[str, Any] = {
            "role": getattr(role, "value", str(role)),
            "ballot": _ballot(getattr(replica, "ballot", None)),
            "leader": getattr(replica, "leader", 0),
            "promised": _ballot(promised),
            "chosen": replica.first_unchosen,
        }
        applied = getattr(store, "applied_slot", None)
        if applied is not None:
            state["applied"] = applied
        rebuilding = getattr(replica, "rebuilding", None)
        if isinstance(rebuilding, bool):
            state["rebuilding"] = rebuilding
        return state
    proposer = getattr(node, "proposer", None)
    if proposer is not None:
        phase = getattr(proposer, "phase", None)
        chosen = getattr(node, "chosen", None)
        return {
            "role": getattr(phase, "value", "idle"),
            "ballot": _ballot(getattr(proposer, "ballot", None)),
            "promised": _ballot(promised),
            "chosen": 1 if chosen is not None else 0,
        }
    return {}
