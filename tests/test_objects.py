"""Replicated objects on their host alone (no node): encoding, semantics, snapshots.

The host is the application the replication layer applies; these tests drive it the
way the layer does (``validate`` on the leader, ``apply`` per chosen command, ``query``
for reads) and check what a caller decodes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from pyxos.objects import (
    Counter,
    Lock,
    LockHolder,
    LockState,
    NotAttached,
    ObjectHost,
    Queue,
    Replicated,
    ReplicatedDict,
    ReplicatedError,
    query,
    replicated,
    tick_command,
)


def call(host: ObjectHost, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """Encode a call as a caller would, run it as the layer would, decode the result."""
    obj = host.objects[name]
    m = type(obj)._pyxos_methods[method]
    data = m.encode(name, args, kwargs)
    if m.kind == "command":
        assert host.validate(data) is None
        return m.decode(host.apply(data))
    return m.decode(host.query(data))


def fresh() -> ObjectHost:
    return ObjectHost(
        {"c": Counter(), "d": ReplicatedDict(), "l": Lock(), "q": Queue()},
    )


def test_counter() -> None:
    h = fresh()
    assert call(h, "c", "incr") == 1
    assert call(h, "c", "incr", 5) == 6
    assert call(h, "c", "decr", by=2) == 4
    assert call(h, "c", "set", 10) == 4
    assert call(h, "c", "get") == 10


def test_dict() -> None:
    h = fresh()
    call(h, "d", "set", "a", {"x": [1, 2]})
    assert call(h, "d", "get", "a") == {"x": [1, 2]}
    assert call(h, "d", "get", "missing", "dflt") == "dflt"
    assert call(h, "d", "cas", "a", {"x": [1, 2]}, 3) is True
    assert call(h, "d", "cas", "a", {"x": [1, 2]}, 4) is False
    assert call(h, "d", "cas", "b", None, 1, absent=True) is True
    assert call(h, "d", "cas", "b", None, 2, absent=True) is False
    assert call(h, "d", "setdefault", "b", 9) == 1
    call(h, "d", "update", {"c": 1, "e": 2})
    assert call(h, "d", "keys") == ["a", "b", "c", "e"]
    assert call(h, "d", "pop", "c") == 1
    assert call(h, "d", "pop", "c", "gone") == "gone"
    assert call(h, "d", "contains", "e") is True
    assert call(h, "d", "size") == 3
    assert call(h, "d", "clear") == 3
    assert call(h, "d", "items") == {}


def test_queue_is_fifo_and_compacts() -> None:
    h = fresh()
    for i in range(3000):
        assert call(h, "q", "put", i) == i + 1
    assert call(h, "q", "peek") == 0
    for i in range(2500):
        assert call(h, "q", "get") == i
    q = h.objects["q"]
    assert isinstance(q, Queue)
    assert len(q.items) < 3000  # popped items were dropped in bulk
    assert call(h, "q", "size") == 500
    assert call(h, "q", "contents") == list(range(2500, 3000))
    for i in range(2500, 3000):
        assert call(h, "q", "get") == i
    assert call(h, "q", "get") is None
    assert call(h, "q", "get", "empty") == "empty"


def test_lock_fencing_and_expiry_by_log_time() -> None:
    h = fresh()
    t1 = call(h, "l", "acquire", "a", 3)  # the lock's time 1: holds through 4
    assert t1 == 1
    assert call(h, "l", "acquire", "b", 3) is None  # time 2: held by a
    assert call(h, "l", "acquire", "a", 3) == t1  # time 3: a renews, same token, through 6
    assert call(h, "l", "state") == LockState(holder="a", token=1, expires=6, now=3)
    call(h, "c", "incr")  # another object's command does not age the lock
    h.apply(tick_command())  # a tick does: time 4
    h.apply(tick_command())  # 5
    assert call(h, "l", "acquire", "b", 2) is None  # time 6: still a's (through 6)
    assert call(h, "l", "holder") == LockHolder("a", 1)
    assert call(h, "l", "acquire", "b", 2) == 2  # time 7: expired, b gets the next token
    assert call(h, "l", "holder") == LockHolder("b", 2)
    assert call(h, "l", "state") == LockState(holder="b", token=2, expires=9, now=7)


def test_without_ticks_a_lock_ages_by_its_waiters_and_a_client_may_tick() -> None:
    """Under ``pyxos serve`` (a factory returning an ObjectHost) nobody submits ticks:
    by design a lock's time moves with the commands on it only, so an abandoned grant
    ends after ``ttl`` attempts of a waiter; a client may also submit the tick command
    itself (it passes ``validate``, as any client's command must)."""
    h = fresh()
    assert call(h, "l", "acquire", "gone", 2) == 1  # time 1, through 3; then abandoned
    for _ in range(20):
        call(h, "c", "incr")  # traffic elsewhere in the log: the lock's time stands still
    assert call(h, "l", "acquire", "w", 2) is None  # 2
    assert call(h, "l", "acquire", "w", 2) is None  # 3
    assert call(h, "l", "acquire", "w", 2) == 2  # 4: the waiter's own attempts aged it
    assert h.validate(tick_command()) is None
    h.apply(tick_command())  # 5
    h.apply(tick_command())  # 6
    assert call(h, "l", "acquire", "x", 2) == 3  # 7: w's grant (through 6) ran out by ticks


def test_lock_release_renew_and_tokens() -> None:
    h = fresh()
    assert call(h, "l", "acquire", "a", 2) == 1  # time 1, through 3
    assert call(h, "l", "acquire", "b", 5) is None  # 2
    assert call(h, "l", "acquire", "b", 5) is None  # 3
    assert call(h, "l", "acquire", "b", 5) == 2  # 4: expired
    assert call(h, "l", "release", "a", 1) is False  # a's grant is gone
    assert call(h, "l", "renew", "a", 1, 5) is False
    assert call(h, "l", "renew", "b", 2, 5) is True
    assert call(h, "l", "release", "b", 2) is True
    assert call(h, "l", "holder") is None
    assert call(h, "l", "release", "b", 2) is False  # twice: no
    assert call(h, "l", "acquire", "a", 1) == 3  # tokens only ever increase
    with pytest.raises(ValueError, match="ttl"):
        call(h, "l", "acquire", "a", 0)


def test_bad_calls_are_refused_before_the_log() -> None:
    h = fresh()
    enc = msgspec.msgpack.encode
    assert h.validate(b"\xc1garbage") is not None
    assert h.validate(enc(("nope", "incr", []))) is not None
    assert h.validate(enc(("c", "nope", []))) is not None
    assert h.validate(enc(("c", "get", []))) is not None  # a query is not a command
    assert h.validate(enc(("c", "incr", ["x"]))) is not None  # wrong argument type
    assert h.validate(enc(("c", "incr", [1, 2]))) is not None  # too many arguments
    assert h.validate(enc(("c", "incr", [2]))) is None
    # Should one reach apply anyway (another version's leader), it is an answer, not a crash.
    with pytest.raises(ReplicatedError, match="Refused"):
        Counter._pyxos_methods["incr"].decode(h.apply(enc(("c", "incr", ["x"]))))
    assert call(h, "c", "get") == 0


def test_exceptions_are_results() -> None:
    class Strict(Replicated):
        n: int = 0

        @replicated
        def boom(self, kind: str) -> None:
            self.n += 1
            if kind == "key":
                raise KeyError("k")
            raise ArithmeticError("custom")

        @replicated
        def custom(self) -> None:
            class Mine(Exception):
                pass

            raise Mine("mine")

    h = ObjectHost({"s": Strict()})
    with pytest.raises(KeyError):
        call(h, "s", "boom", "key")
    with pytest.raises(ArithmeticError, match="custom"):
        call(h, "s", "boom", "x")
    with pytest.raises(ReplicatedError, match="Mine: mine"):
        call(h, "s", "custom")


def test_a_base_exception_of_a_body_is_a_result_and_a_process_exit_is_not() -> None:
    """A ``BaseException`` subclass of the user's own is the same on every replica: the
    call's result (raised again in the caller as ``ReplicatedError``). A Ctrl-C or
    ``SystemExit`` is about the process and propagates."""

    class Abort(BaseException):
        pass

    class Risky(Replicated):
        n: int = 0

        @replicated
        def go(self, how: str) -> int:
            self.n += 1
            if how == "abort":
                raise Abort("stop here")
            if how == "interrupt":
                raise KeyboardInterrupt
            return self.n

        @query
        def peek(self, how: str) -> int:
            if how == "abort":
                raise Abort("no peeking")
            return self.n

    h = ObjectHost({"r": Risky()})
    with pytest.raises(ReplicatedError, match="Abort: stop here"):
        call(h, "r", "go", "abort")
    with pytest.raises(ReplicatedError, match="Abort: no peeking"):
        call(h, "r", "peek", "abort")
    with pytest.raises(KeyboardInterrupt):
        call(h, "r", "go", "interrupt")
    assert call(h, "r", "go", "ok") == 3


def test_snapshot_round_trip_and_refusals() -> None:
    h = fresh()
    call(h, "c", "incr", 7)
    call(h, "d", "set", "k", [1, "two", None])
    call(h, "l", "acquire", "a", 10)
    call(h, "q", "put", b"bytes")
    snap = h.snapshot()
    h2 = fresh()
    h2.restore(snap)
    assert h2.snapshot() == snap
    assert h2.log_time == h.log_time == 4
    assert call(h2, "d", "get", "k") == [1, "two", None]
    assert call(h2, "q", "get") == b"bytes"
    # Not a snapshot of these objects: ValueError, nothing changed.
    before = h2.snapshot()
    for bad in (b"junk", msgspec.msgpack.encode([1, 0, {}])):
        with pytest.raises(ValueError):
            h2.restore(bad)
    other = ObjectHost({"c": Counter()})
    with pytest.raises(ValueError, match="objects"):
        other.restore(snap)
    assert h2.snapshot() == before


def test_user_class_fields_and_constraints() -> None:
    class Inventory(Replicated):
        stock: dict[str, int] = {}
        log: list[tuple[str, int]] = []

        @replicated
        def add(self, item: str, n: int = 1) -> int:
            self.stock[item] = self.stock.get(item, 0) + n
            self.log.append((item, n))
            return self.stock[item]

        @query
        def count(self, item: str) -> int:
            return self.stock.get(item, 0)

    a, b = Inventory(), Inventory()
    assert a.stock is not b.stock  # defaults are copied, not shared
    h = ObjectHost({"inv": a})
    assert call(h, "inv", "add", "apple", 2) == 2
    assert call(h, "inv", "count", "apple") == 2
    h2 = ObjectHost({"inv": b})
    h2.restore(h.snapshot())
    assert b.log == [("apple", 2)]  # typed fields come back as their types (tuples)

    class Bad(Replicated):
        tags: set[str] = set()

    with pytest.raises(TypeError, match="set fields"):
        ObjectHost({"bad": Bad()})
    with pytest.raises(TypeError, match="unknown fields"):
        Counter(nope=1)
    with pytest.raises(TypeError, match="args"):

        class Varargs(Replicated):
            @replicated
            def f(self, *xs: int) -> None: ...


def test_unattached_call_raises() -> None:
    c = Counter()
    with pytest.raises(NotAttached):
        asyncio.run(c.incr())
    with pytest.raises(ValueError, match="already hosted"):
        ObjectHost({"a": c})
        ObjectHost({"b": c})


def test_a_counter_never_holds_an_int_no_snapshot_can_encode() -> None:
    """Three ``incr(2**63 - 1)`` took the value past 2**64: the call failed to encode
    its result, but the value stayed, and every later ``snapshot()`` of every replica
    raised ``OverflowError`` (a poison command: each node dies at its next snapshot,
    and again after each restart). Now the command is refused, the value unchanged."""
    from pyxos.objects.base import ObjectHost, decode_result, encode_call

    host = ObjectHost({"c": Counter()})
    up = encode_call(host.objects["c"].incr, 2**63 - 1)  # type: ignore[attr-defined]
    down = encode_call(host.objects["c"].decr, 2**63 - 1)  # type: ignore[attr-defined]
    assert host.validate(up) is None
    assert decode_result(host.apply(up), int) == 2**63 - 1
    for cmd in (up, up):
        with pytest.raises(OverflowError, match="signed 64-bit"):
            decode_result(host.apply(cmd), int)
    assert decode_result(host.apply(down), int) == 0
    assert decode_result(host.apply(down), int) == -(2**63) + 1
    with pytest.raises(OverflowError):
        decode_result(host.apply(down), int)
    again = ObjectHost({"c": Counter()})
    again.restore(host.snapshot())
    assert again.objects["c"].value == -(2**63) + 1  # type: ignore[attr-defined]


class _Tagged(msgspec.Struct):
    names: frozenset[str] = frozenset()


def test_sets_inside_a_field_are_refused_like_set_fields() -> None:
    """Only a field annotated ``set``/``frozenset`` itself was refused: a set inside
    one (``dict[str, set[str]]``, an optional frozenset, a Struct holding one) was
    accepted, and its iteration order (the order ``list(self.tags[k])`` returns, the
    order its snapshot encodes) depends on the process's hash seed."""

    class InDict(Replicated):
        tags: dict[str, set[str]] = {}

    class InOptional(Replicated):
        ids: frozenset[int] | None = None

    class InStruct(Replicated):
        tagged: list[_Tagged] = []

    for cls in (InDict, InOptional, InStruct):
        with pytest.raises(TypeError, match="sets inside a field"):
            ObjectHost({"x": cls()})

    class Fine(Replicated):
        tags: dict[str, list[str]] = {}
        maybe: int | None = None

    ObjectHost({"x": Fine()}).snapshot()


class _Gather(Replicated):
    items: list[int] = []

    @replicated
    def grab(self, xs: list[int]) -> list[int]:
        xs.append(len(self.items))  # mutates its own argument
        self.items.extend(xs)
        return xs


def test_a_validated_call_is_applied_from_its_parse_once() -> None:
    """The leader validates every command it proposes, then applies it: apply takes
    validate's parse instead of decoding again, once per parse (popped), so a body
    that mutates its argument never sees another call's; the results and the state
    are a replica's that never validated (a follower's)."""
    leader, follower = ObjectHost({"g": _Gather()}), ObjectHost({"g": _Gather()})
    m = _Gather._pyxos_methods["grab"]
    data = m.encode("g", ([7],), {})
    assert leader.validate(data) is None
    assert leader.validate(data) is None  # the same bytes twice: one parse kept
    assert len(leader._validated) == 1
    results = [m.decode(leader.apply(data)) for _ in range(3)]
    assert not leader._validated  # taken by the first apply
    assert (
        results
        == [m.decode(follower.apply(data)) for _ in range(3)]
        == [
            [7, 0],
            [7, 2],
            [7, 4],
        ]
    )
    assert leader.snapshot() == follower.snapshot()
    big = m.encode("g", (list(range(1000)),), {})
    assert leader.validate(big) is None and not leader._validated  # large: not kept
    assert leader.validate(b"\x93\xa1g\xa4grab\x91\xa1x") is not None  # a bad argument
    assert not leader._validated


def test_results_decode_by_the_short_path_as_by_the_long() -> None:
    """A ``[true, value]`` result is decoded without its pair; what does not decode
    raises what it always raised (the value's ValidationError, BadResult for junk)."""
    from pyxos.objects import decode_result

    m = Counter._pyxos_methods["incr"]
    assert m.decode(msgspec.msgpack.encode((True, 7))) == 7
    with pytest.raises(msgspec.ValidationError):
        m.decode(msgspec.msgpack.encode((True, "seven")))
    with pytest.raises(ReplicatedError, match="BadResult"):
        decode_result(b"\x92\xc3\x01\x02", int)  # a value, then junk
    with pytest.raises(OverflowError, match="range"):
        m.decode(msgspec.msgpack.encode((False, ("OverflowError", "out of range"))))


def test_submit_needs_an_attached_object() -> None:
    with pytest.raises(NotAttached):
        Counter().incr.submit()
    with pytest.raises(NotAttached):
        Counter().get.submit()
