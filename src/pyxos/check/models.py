"""Sequential specifications ("models") that the linearizability checker judges against.

Theory of operation
===================

A model says what one object does when operations reach it one at a time, in the
shape Porcupine and Knossos use:

- ``init()``: the initial state;
- ``step(state, input) -> (state, output)``: apply one operation. Pure and total: the
  same state and input always give the same result, and every input has one. States
  must be hashable (and compare equal exactly when they are the same state): the
  checker memoizes on them;
- ``partition(input)`` (optional): operations whose keys differ never constrain each
  other, so each key's sub-history is checked on its own (P-compositionality);
- ``equal(model_output, observed_output)`` (optional): whether an observed output is
  the one the model gives (default ``==``);
- ``readonly(input)`` (optional): the operation never changes the state (a read). The
  checker drops reads whose outcome is unknown, and places a read that fits the
  current state at once;
- ``parse(op)``: turn one history line's ``op``, ``input`` and ``output`` (JSON, see
  :class:`pyxos.check.history.AppOperation`) into the model's input and output, or
  raise ``ValueError`` saying what is wrong or missing (``pyxos check`` exits 2 with
  that reason and the line number);
- ``describe(input, output)``: one short line for reports.

An operation of unknown outcome (no return) may have taken effect at any moment after
its call, or never, as in Porcupine: its output is not compared, and the search may
leave it out. The models shipped here (``MODELS``): the key-value store (``kv``; its
histories are checked by the specialised register checker, which this model
cross-checks in the tests), a counter, a FIFO queue and a lock with fencing tokens.
A user's own model is any object with these methods, named on the command line as
``module:attr`` (``pyxos check --model mypkg.models:ACCOUNT``).

The history JSON of each model's operations is documented on its class and in
docs/architecture.md ("Histories").
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol, cast, runtime_checkable

import msgspec

from pyxos.check.history import AppOperation
from pyxos.statemachine.loader import import_spec

__all__ = [
    "KV",
    "MODELS",
    "Counter",
    "FifoQueue",
    "Lock",
    "Model",
    "ModelOp",
    "resolve_model",
]


@runtime_checkable
class Model(Protocol):
    """A sequential specification (see the module notes for each method's contract).

    ``partition``, ``equal`` and ``readonly`` are optional: the checker uses them when
    present (:class:`SequentialModel` has the defaults).
    """

    name: str

    def init(self) -> Hashable:
        """The initial state."""
        ...

    def step(self, state: Any, input: Any) -> tuple[Any, Any]:
        """``(next state, output)`` of ``input`` applied in ``state``; pure and total."""
        ...

    def parse(self, op: AppOperation) -> tuple[Any, Any]:
        """``(input, output)`` of one history line; ``ValueError`` says what is wrong."""
        ...

    def describe(self, input: Any, output: Any) -> str:
        """A short human-readable form of an operation, for reports."""
        ...


class SequentialModel:
    """Defaults for the optional methods of a :class:`Model`, and JSON helpers."""

    name = "model"

    def partition(self, input: Any) -> Hashable:
        """The key of ``input``'s sub-history (default: one history)."""
        return None

    def equal(self, expected: Any, observed: Any) -> bool:
        """Whether ``observed`` is the output the model gives, ``expected`` (``==``,
        telling ``true`` from ``1`` apart)."""
        return _strict_equal(expected, observed)

    def readonly(self, input: Any) -> bool:
        """Whether ``input`` never changes the state (default: no)."""
        return False

    def describe(self, input: Any, output: Any) -> str:
        """``op input -> output``."""
        return f"{input!r} -> {output!r}"


def _strict_equal(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _freeze(value: Any) -> Hashable:
    """A JSON value as a hashable one: arrays as tuples, objects as sorted pairs
    behind a marker (so ``{"a": 1}`` and ``[["a", 1]]`` differ)."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return ("\x00object", *sorted((k, _freeze(v)) for k, v in value.items()))
    result: Hashable = value
    return result


def _need_output(op: AppOperation) -> Any:
    """The output of an answered operation (None for others); a missing one is an
    error, never read as null."""
    if not op.answered:
        return None
    if op.output is msgspec.UNSET:
        raise ValueError(
            f'{op.op!r}: an operation that returned needs "output" (null where that is '
            "its value); the field is missing"
        )
    return op.output


def _need_input(op: AppOperation) -> Any:
    if op.input is msgspec.UNSET:
        raise ValueError(
            f'{op.op!r} needs "input" (null where it takes none); the field is missing'
        )
    return op.input


def _is_int(v: Any) -> bool:
    return type(v) is int


def _field(op: AppOperation, doc: Any, name: str, want: str) -> Any:
    """Field ``name`` of the input object ``doc``, checked against ``want``."""
    if not isinstance(doc, dict):
        raise ValueError(f"{op.op!r} takes an object as input, not {_json(doc)}")
    if name not in doc:
        raise ValueError(f'{op.op!r} needs "{name}" in its input; the field is missing')
    v = doc[name]
    ok = {
        "str": isinstance(v, str),
        "str|null": v is None or isinstance(v, str),
        "int": _is_int(v),
    }[want]
    if not ok:
        raise ValueError(
            f'{op.op}: input "{name}" must be {want.replace("|", " or ")}, not {_json(v)}'
        )
    return v


def _only_fields(op: AppOperation, doc: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise ValueError(f"{op.op}: unknown input field(s) {', '.join(extra)}")


def _no_input(op: AppOperation) -> None:
    doc = _need_input(op)
    if doc is not None:
        raise ValueError(f"{op.op!r} takes no input (null), not {_json(doc)}")


def _json(v: Any) -> str:
    return msgspec.json.encode(v).decode()


def _unknown_op(op: AppOperation, model: str, names: str) -> ValueError:
    return ValueError(f"unknown {model} operation {op.op!r} (known: {names})")


# -- key-value store ----------------------------------------------------------------------


class KV(SequentialModel):
    """The key-value store: a map from string keys to string values, partitioned by key.

    History JSON (``op``: ``input`` -> ``output``):

    - ``get``: ``{"key": k}`` -> the value, or null if the key is absent;
    - ``put``: ``{"key": k, "value": v}`` -> null;
    - ``delete``: ``{"key": k}`` -> null;
    - ``cas``: ``{"key": k, "expected": e | null, "value": v}`` -> true if the key held
      ``e`` (null: was absent) and now holds ``v``, false if it held something else.

    Key-value histories may also use the original line format (``key``, ``value``,
    ``expected`` at top level; docs/architecture.md). The state of one key's register is
    its value (None: absent); inputs are ``(op, key, value, expected)``.
    """

    name = "kv"

    def init(self) -> str | None:
        """An absent key."""
        return None

    def step(
        self, state: str | None, input: tuple[str, str, str | None, str | None]
    ) -> tuple[str | None, Any]:
        """Apply one operation to one key's register."""
        kind, _, value, expected = input
        if kind == "get":
            return state, state
        if kind == "put":
            return value, None
        if kind == "delete":
            return None, None
        if state == expected:
            return value, True
        return state, False

    def partition(self, input: tuple[str, str, str | None, str | None]) -> Hashable:
        """The key."""
        return input[1]

    def readonly(self, input: tuple[str, str, str | None, str | None]) -> bool:
        """A get."""
        return input[0] == "get"

    def parse(self, op: AppOperation) -> tuple[Any, Any]:
        """Read a get, put, delete or cas line (see the class notes)."""
        doc = _need_input(op)
        key = _field(op, doc, "key", "str")
        out = _need_output(op)
        if op.op == "get":
            _only_fields(op, doc, {"key"})
            if op.answered and not (out is None or isinstance(out, str)):
                raise ValueError(f"a get outputs a string or null, not {_json(out)}")
            return ("get", key, None, None), out
        if op.op == "put":
            _only_fields(op, doc, {"key", "value"})
            value = _field(op, doc, "value", "str")
            return ("put", key, value, None), _null_output(op, out)
        if op.op == "delete":
            _only_fields(op, doc, {"key"})
            return ("delete", key, None, None), _null_output(op, out)
        if op.op == "cas":
            _only_fields(op, doc, {"key", "expected", "value"})
            expected = _field(op, doc, "expected", "str|null")
            value = _field(op, doc, "value", "str")
            if op.answered and type(out) is not bool:
                raise ValueError(f"a cas outputs true or false, not {_json(out)}")
            return ("cas", key, value, expected), out
        raise _unknown_op(op, "kv", "get, put, delete, cas")

    def describe(self, input: tuple[str, str, str | None, str | None], output: Any) -> str:
        """``get k -> v``, ``cas k 'a' -> 'b'``..."""
        kind, key, value, expected = input
        args = {"get": "", "put": f" {value!r}", "delete": ""}.get(
            kind, f" {expected!r} -> {value!r}"
        )
        return f"{kind} {key!r}{args}" + (f" => {output!r}" if kind in ("get", "cas") else "")


def _null_output(op: AppOperation, out: Any) -> Any:
    """``out``, checked to be null for an operation that outputs nothing."""
    if op.answered and out is not None:
        raise ValueError(f"{op.op!r} outputs null, not {_json(out)}")
    return out


# -- counter --------------------------------------------------------------------------------


class Counter(SequentialModel):
    """One integer counter, starting at 0.

    History JSON (``op``: ``input`` -> ``output``):

    - ``incr``: null -> the value after adding 1;
    - ``add``: an integer n (any sign) -> the value after adding n;
    - ``get``: null -> the value.

    Inputs are ``("incr", 1)``, ``("add", n)`` or ``("get", 0)``; the state is the value.
    """

    name = "counter"

    def init(self) -> int:
        """Zero."""
        return 0

    def step(self, state: int, input: tuple[str, int]) -> tuple[int, int]:
        """Add ``input[1]``; output the value after."""
        value = state + input[1]
        return value, value

    def readonly(self, input: tuple[str, int]) -> bool:
        """A get."""
        return input[0] == "get"

    def parse(self, op: AppOperation) -> tuple[Any, Any]:
        """Read an incr, add or get line (see the class notes)."""
        if op.op in ("incr", "get"):
            _no_input(op)
            inp = (op.op, 1 if op.op == "incr" else 0)
        elif op.op == "add":
            n = _need_input(op)
            if not _is_int(n):
                raise ValueError(f"an add takes an integer as input, not {_json(n)}")
            inp = ("add", n)
        else:
            raise _unknown_op(op, "counter", "incr, add, get")
        out = _need_output(op)
        if op.answered and not _is_int(out):
            raise ValueError(f"{op.op!r} outputs an integer, not {_json(out)}")
        return inp, out

    def describe(self, input: tuple[str, int], output: Any) -> str:
        """``incr => 3``, ``add -2 => 1``, ``get => 1``."""
        arg = f" {input[1]}" if input[0] == "add" else ""
        return f"{input[0]}{arg} => {output!r}"


# -- FIFO queue -----------------------------------------------------------------------------


class FifoQueue(SequentialModel):
    """A first-in, first-out queue of JSON items (any value but null), starting empty.

    History JSON (``op``: ``input`` -> ``output``):

    - ``enqueue``: the item -> the number of items after it was added;
    - ``dequeue``: null -> the item at the head, removed; null if the queue is empty;
    - ``peek``: null -> the item at the head, left in place; null if empty;
    - ``len``: null -> the number of items.

    The state is the tuple of items, head first (arrays and objects frozen, see
    ``_freeze``). These are the semantics of :class:`pyxos.objects.builtin.Queue`
    (``put``, ``get``, ``peek``, ``size``).
    """

    name = "queue"

    def init(self) -> tuple[Hashable, ...]:
        """The empty queue."""
        return ()

    def step(self, state: tuple[Hashable, ...], input: tuple[str, Hashable]) -> tuple[Any, Any]:
        """Apply one queue operation."""
        kind = input[0]
        if kind == "enqueue":
            return (*state, input[1]), len(state) + 1
        if kind == "dequeue":
            return (state[1:], state[0]) if state else (state, None)
        if kind == "peek":
            return state, state[0] if state else None
        return state, len(state)

    def readonly(self, input: tuple[str, Hashable]) -> bool:
        """A peek or len."""
        return input[0] in ("peek", "len")

    def parse(self, op: AppOperation) -> tuple[Any, Any]:
        """Read an enqueue, dequeue, peek or len line (see the class notes)."""
        out = _need_output(op)
        if op.op == "enqueue":
            item = _need_input(op)
            if item is None:
                raise ValueError("an enqueue needs an item (any JSON value but null)")
            if op.answered and not _is_int(out):
                raise ValueError(f"an enqueue outputs the length (an integer), not {_json(out)}")
            return ("enqueue", _freeze(item)), out
        if op.op in ("dequeue", "peek", "len"):
            _no_input(op)
            if op.op == "len" and op.answered and not _is_int(out):
                raise ValueError(f"a len outputs an integer, not {_json(out)}")
            return (op.op, None), _freeze(out)
        raise _unknown_op(op, "queue", "enqueue, dequeue, peek, len")

    def describe(self, input: tuple[str, Hashable], output: Any) -> str:
        """``enqueue 'x'``, ``dequeue => 'x'``..."""
        if input[0] == "enqueue":
            return f"enqueue {input[1]!r} => {output!r}"
        return f"{input[0]} => {output!r}"


# -- lock with fencing tokens ---------------------------------------------------------------


class Lock(SequentialModel):
    """A lease lock with fencing tokens and expiry by log time: the semantics of
    :class:`pyxos.objects.builtin.Lock`. Locks are checked independently, by name.

    *Log time.* Each lock has its own clock, counted in the log: the number of commands
    on that lock (``acquire``, ``renew``, ``release``, whatever their outcome) and of
    ticks applied so far. The command applied when the clock reads ``t`` runs at log
    time ``t + 1``. No wall clock enters: every replica applies the same commands in the
    same order, so every replica sees the same times. A query (``holder``, ``state``) is
    not in the log and does not move the clock; neither does a retry answered from the
    session table, a command refused before it reached the log, or a command on another
    lock. A *tick* (a command that only moves every lock's clock by one, submitted by a
    leader so that an abandoned lock also expires on a quiet cluster) must be in the
    history, once per lock, as a ``tick`` operation.

    *Expiry.* A grant at log time ``t`` with ``ttl`` (an integer >= 1) holds through log
    time ``t + ttl``: the next ``ttl`` commands on the lock find it held; a command at a
    later time first ends the grant (expired), then does what it does. So a holder that
    stops renewing loses the lock after ``ttl`` further commands or ticks: the attempts
    of those waiting for it are what age it, and ticks.

    *Fencing tokens.* Every grant to a new holder gets the next token: 1, 2, 3..., never
    reused. A holder that calls ``acquire`` again while it holds the lock renews it
    (held through ``now + ttl``) and keeps its token; so does ``renew`` with the
    current token. A holder whose grant expired may still believe it holds the lock;
    the token it carries is then below the current holder's, which is how a resource
    guarded by the lock tells a stale holder from the current one.

    History JSON (``op``: ``input`` -> ``output``); every input may name the lock with
    ``"lock": str`` (default ``""``):

    - ``acquire``: ``{"owner": str, "ttl": int}`` -> the token (an integer) if the lock
      was free (or expired) or held by ``owner`` (renewal); null if another owner holds it;
    - ``renew``: ``{"owner": str, "token": int, "ttl": int}`` -> true if ``owner`` holds
      the lock with that token (now held through ``now + ttl``), false otherwise;
    - ``release``: ``{"owner": str, "token": int}`` -> true if ``owner`` held the lock
      with that token (it is now free), false otherwise (nothing changes but the clock);
    - ``holder``: ``{}`` (or null) -> ``{"owner": str, "token": int}`` as of the last
      command or tick, or null if free (a grant whose time ran out shows until the next
      command or tick);
    - ``state``: ``{}`` (or null) -> ``{"holder": str | null, "token": int, "expires":
      int, "now": int}``: the same holder, the last grant's token (0 before the first),
      the last log time the grant holds through, and the lock's log time;
    - ``tick``: ``{}`` (or null) -> null.

    The state of one lock: ``(now, holder, token, expires)``.
    """

    name = "lock"

    def init(self) -> tuple[int, str | None, int, int]:
        """Free, at log time 0, no token issued."""
        return (0, None, 0, 0)

    def step(
        self, state: tuple[int, str | None, int, int], input: tuple[str, str, str, int, int]
    ) -> tuple[tuple[int, str | None, int, int], Any]:
        """Apply one lock operation (see the class notes)."""
        kind, _, owner, token_in, ttl = input
        now, holder, token, expires = state
        if kind == "holder":
            return state, None if holder is None else (owner_pair(holder, token))
        if kind == "state":
            return state, (holder, token, expires, now)
        now += 1
        if holder is not None and now > expires:
            holder = None  # the grant expired
        if kind == "acquire":
            if holder is None:
                token += 1
                holder = owner
            elif holder != owner:
                return (now, holder, token, expires), None
            return (now, holder, token, now + ttl), token
        if kind == "tick":
            return (now, holder, token, expires), None
        if holder != owner or token != token_in:
            return (now, holder, token, expires), False
        if kind == "renew":
            return (now, holder, token, now + ttl), True
        return (now, None, token, expires), True  # release

    def partition(self, input: tuple[str, str, str, int, int]) -> Hashable:
        """The lock's name."""
        return input[1]

    def readonly(self, input: tuple[str, str, str, int, int]) -> bool:
        """A query (holder, state)."""
        return input[0] in ("holder", "state")

    def parse(self, op: AppOperation) -> tuple[Any, Any]:
        """Read an acquire, renew, release, holder, state or tick line (see the class
        notes)."""
        doc = _need_input(op)
        if doc is None and op.op in ("holder", "state", "tick"):
            doc = {}
        if not isinstance(doc, dict):
            raise ValueError(f"{op.op!r} takes an object as input, not {_json(doc)}")
        name = doc.get("lock", "")
        if not isinstance(name, str):
            raise ValueError(f'{op.op}: input "lock" must be a string, not {_json(name)}')
        out = _need_output(op)
        if op.op == "acquire":
            _only_fields(op, doc, {"lock", "owner", "ttl"})
            owner = _field(op, doc, "owner", "str")
            ttl = _field(op, doc, "ttl", "int")
            if ttl < 1:
                raise ValueError(f"an acquire needs a ttl of at least 1, not {ttl}")
            if op.answered and not (out is None or _is_int(out)):
                raise ValueError(f"an acquire outputs a token (integer) or null, not {_json(out)}")
            return ("acquire", name, owner, 0, ttl), out
        if op.op in ("renew", "release"):
            fields = (
                {"lock", "owner", "token", "ttl"}
                if op.op == "renew"
                else {"lock", "owner", "token"}
            )
            _only_fields(op, doc, fields)
            owner = _field(op, doc, "owner", "str")
            token = _field(op, doc, "token", "int")
            ttl = _field(op, doc, "ttl", "int") if op.op == "renew" else 0
            if op.op == "renew" and ttl < 1:
                raise ValueError(f"a renew needs a ttl of at least 1, not {ttl}")
            if op.answered and type(out) is not bool:
                raise ValueError(f"{op.op!r} outputs true or false, not {_json(out)}")
            return (op.op, name, owner, token, ttl), out
        if op.op == "holder":
            _only_fields(op, doc, {"lock"})
            if op.answered and out is not None:
                if (
                    not isinstance(out, dict)
                    or set(out) != {"owner", "token"}
                    or not isinstance(out["owner"], str)
                    or not _is_int(out["token"])
                ):
                    raise ValueError(
                        f'a holder outputs {{"owner": str, "token": int}} or null, not {_json(out)}'
                    )
                out = owner_pair(out["owner"], out["token"])
            return ("holder", name, "", 0, 0), out
        if op.op == "state":
            _only_fields(op, doc, {"lock"})
            if op.answered:
                if (
                    not isinstance(out, dict)
                    or set(out) != {"holder", "token", "expires", "now"}
                    or not (out["holder"] is None or isinstance(out["holder"], str))
                    or not all(_is_int(out[k]) for k in ("token", "expires", "now"))
                ):
                    raise ValueError(
                        'a state outputs {"holder": str|null, "token": int, "expires": int,'
                        f' "now": int}}, not {_json(out)}'
                    )
                out = (out["holder"], out["token"], out["expires"], out["now"])
            return ("state", name, "", 0, 0), out
        if op.op == "tick":
            _only_fields(op, doc, {"lock"})
            return ("tick", name, "", 0, 0), _null_output(op, out)
        raise _unknown_op(op, "lock", "acquire, renew, release, holder, state, tick")

    def describe(self, input: tuple[str, str, str, int, int], output: Any) -> str:
        """``acquire 'a' ttl 3 => 2``..."""
        kind, name, owner, token, ttl = input
        lock = f"[{name}] " if name else ""
        if kind == "acquire":
            return f"{lock}acquire {owner!r} ttl {ttl} => {output!r}"
        if kind == "renew":
            return f"{lock}renew {owner!r} token {token} ttl {ttl} => {output!r}"
        if kind == "release":
            return f"{lock}release {owner!r} token {token} => {output!r}"
        return f"{lock}{kind} => {output!r}"


def owner_pair(owner: str, token: int) -> tuple[str, int]:
    """The model's form of a ``holder`` output."""
    return (owner, token)


MODELS: dict[str, Model] = {
    "kv": KV(),
    "counter": Counter(),
    "queue": FifoQueue(),
    "lock": Lock(),
}
"""The models shipped in the package, by the name ``pyxos check --model`` takes."""


def resolve_model(spec: str) -> Model:
    """The model named ``spec``: one of ``MODELS``, or ``module:attr`` (an object with
    the methods of :class:`Model`, or a class that makes one with no arguments).

    Raises ``ValueError`` with the reason if it cannot be found or is not a model.
    """
    if spec in MODELS:
        return MODELS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown model {spec!r}: one of {', '.join(MODELS)}, or module:attr")
    obj = import_spec(spec, "model")
    if isinstance(obj, type):
        obj = obj()
    missing = [m for m in ("init", "step", "parse") if not callable(getattr(obj, m, None))]
    if missing:
        raise ValueError(f"{spec} is not a model: it lacks {', '.join(missing)}")
    if not isinstance(getattr(obj, "name", None), str):
        raise ValueError(f"{spec} is not a model: it lacks a name (str)")
    return cast(Model, obj)


class ModelOp(msgspec.Struct, frozen=True):
    """One history line read by a model: the line and its parsed input and output."""

    op: AppOperation
    input: Any
    output: Any
