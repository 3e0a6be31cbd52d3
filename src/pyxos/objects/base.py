"""Replicated Python objects: decorated methods become commands of the replicated log.

Theory of operation
-------------------
In the spirit of PySyncObj's ``@replicated``: a user class derives from
:class:`Replicated`, declares its state as annotated fields (like a dataclass), and
marks its methods:

- ``@replicated``: a *command*. Called on a replica attached to a node
  (``await counter.incr(5)``), the call is encoded (object name, method name,
  arguments) and submitted to the replicated log; once it is chosen, durable on a
  quorum and applied, every replica has run the method body on its own copy, in log
  order, and the caller gets the return value of its replica's run.
- ``@query``: a *linearizable read*. It never enters the log: the leader answers it
  from its applied state, under its lease or after a read-index round (see
  docs/architecture.md, *The protocol*). The body must not change the state.

Every object a node hosts lives in one :class:`ObjectHost`, which implements the
replication layer's application contract (``apply``, ``query``, ``snapshot``,
``restore``, ``validate``; docs/architecture.md, *Replicated objects*). Sessions,
exactly-once, batching and snapshots of the session table are the layer's job, not
ours: a caller's ``(client, seq)`` rides on the request, and a retried call is answered
from the session table without running the method again.

Encoding (never pickle: commands arrive from the network, snapshots from peers): a
call is the msgpack array ``[object, method, [arg, ...]]``; the arguments are checked
against the method's annotations with a ``msgspec`` decoder built once per method, so
an argument of the wrong type is refused by ``validate`` on the leader and never
reaches the log. A result is ``[true, value]`` or ``[false, [exception type name,
message]]``; the caller decodes ``value`` with the method's return annotation. An
exception raised by a command body is part of the result, the same on every replica,
and is raised again in the caller (builtin exception types as themselves, others as
:class:`ReplicatedError`).

Field types: a state field must be of a type msgspec encodes *and decodes back to
equal*: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``list``,
``tuple``, ``dict`` (str or int keys), ``msgspec.Struct``, dataclasses, enums, and
unions and optionals of those, annotated precisely (``Any`` decodes as plain msgpack:
lists, not tuples). ``set`` and ``frozenset`` fields are refused, and so is a field
whose type holds one anywhere (``dict[str, set[str]]``, a Struct with a set): their iteration
order depends on the process's hash seed, so replicas would encode, and could iterate,
them differently. A command body must be deterministic: it may read only ``self``, its
arguments and :attr:`Replicated.log_time`; no clock, randomness, I/O, or other
objects' state.

Log time: the host counts the commands it applies (every command of every object it
holds, and the ticks a node submits; see ``pyxos.embedded``); a command reads the count
as ``self.log_time``, and a tick also calls every object's ``on_log_tick()``. Both are
the same on every replica at the same point of the log, so expiry measured in them
(the lock keeps its own clock this way) is deterministic, which wall clocks are not.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Final,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
)

import msgspec

if TYPE_CHECKING:
    import asyncio  # only for the type of BoundMethod.submit: this layer runs no loop

__all__ = [
    "Binding",
    "BoundMethod",
    "NotAttached",
    "ObjectHost",
    "Replicated",
    "ReplicatedError",
    "decode_result",
    "encode_call",
    "query",
    "replicated",
    "tick_command",
]

S = TypeVar("S", bound="Replicated")
P = ParamSpec("P")
R = TypeVar("R")

TICK_OBJECT: Final = ""
"""The object name of a tick: a command that only advances the log time."""

SNAPSHOT_VERSION: Final = 1

# What a method body may raise that ends the process rather than answers the call
# (pyxos.statemachine.replicated.PROCESS_EXITS; this layer imports nothing of pyxos).
_PROCESS_EXITS: Final = (KeyboardInterrupt, SystemExit)

_encoder = msgspec.msgpack.Encoder()
_call_decoder = msgspec.msgpack.Decoder(tuple[str, str, msgspec.Raw])
_result_decoder = msgspec.msgpack.Decoder(tuple[bool, msgspec.Raw])
_error_decoder = msgspec.msgpack.Decoder(tuple[str, str])

# Exceptions raised again as themselves in the caller (by the name in the result).
_BUILTIN_ERRORS: Final[dict[str, type[Exception]]] = {
    name: getattr(builtins, name)
    for name in (
        "ArithmeticError",
        "AssertionError",
        "AttributeError",
        "IndexError",
        "KeyError",
        "LookupError",
        "OverflowError",
        "PermissionError",
        "RuntimeError",
        "TypeError",
        "ValueError",
        "ZeroDivisionError",
    )
}


class ReplicatedError(Exception):
    """A command or query failed on the replicas with an exception that is not a
    builtin one, or the replication layer refused it; ``kind`` names the exception."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        """The exception type's name (``"Refused"`` for a refusal of the layer)."""
        self.message = message
        """The exception's message."""


class NotAttached(RuntimeError):
    """A replicated method was called on an object that no node hosts."""


class Binding(Protocol):
    """Where an attached object sends its calls (an embedded node implements it).

    A binding may also offer ``submit(data, *, decode)``, returning a future of
    ``decode(result)`` without a coroutine per call (``EmbeddedNode.submit``); a
    command's ``await`` and ``.submit(...)`` use it when it is there.
    """

    async def command(self, data: bytes) -> bytes:
        """Submit ``data`` to the log; return the result bytes once applied."""
        ...

    async def query(self, data: bytes) -> bytes:
        """Run the read-only query ``data`` linearizably; return the result bytes."""
        ...


class BoundMethod(Generic[P, R]):
    """A decorated method of an object: ``await obj.method(...)`` submits the call and
    returns its value; for a ``@replicated`` one, ``obj.method.submit(...)`` submits it
    at once and returns an ``asyncio.Future`` of the value (on the node's loop; with
    a done-callback per future many calls can be outstanding without a coroutine
    each). Made once per object and method, on first use."""

    def __init__(self, method: _Method[Any, P, R], obj: Replicated) -> None:
        self._pyxos_method = method
        self._pyxos_object = obj
        self._decode = method.decode  # one bound method, not one per call
        self.__name__ = method.name
        self.__doc__ = method.fn.__doc__

    def _binding(self) -> Any:
        obj = self._pyxos_object
        binding = obj._pyxos_binding
        if binding is None:
            raise NotAttached(
                f"{type(obj).__name__}.{self.__name__}: the object is not attached to a node"
            )
        return binding

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        binding = self._binding()
        method = self._pyxos_method
        obj = self._pyxos_object
        data = method.encode(obj._pyxos_name, args, kwargs)
        if method.kind != "command":
            return typing.cast(R, method.decode(await binding.query(data)))
        submit = obj._pyxos_submit
        if submit is not None:
            return typing.cast(R, await submit(data, decode=self._decode))
        return typing.cast(R, method.decode(await binding.command(data)))

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[R]:
        """Submit this command now; a future of its value (or of its exception)."""
        method = self._pyxos_method
        obj = self._pyxos_object
        submit = obj._pyxos_submit
        if submit is None or method.kind != "command":
            binding = self._binding()  # NotAttached if no node hosts the object
            if method.kind != "command":
                raise TypeError(f"{self.__name__} is a @query: await it (not submitted)")
            raise TypeError(f"{type(binding).__name__} has no submit(): await the call instead")
        future: asyncio.Future[R] = submit(
            method.encode(obj._pyxos_name, args, kwargs), decode=self._decode
        )
        return future


class _Method(Generic[S, P, R]):
    """A decorated method: the body runs on the replicas; an attached instance's
    attribute is an async callable that submits the call."""

    def __init__(self, fn: Callable[Concatenate[S, P], R], kind: str) -> None:
        self.fn = fn
        self.kind = kind
        self.name = fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._signature = inspect.signature(fn)
        self._params = list(self._signature.parameters.values())[1:]
        for p in self._params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{self.name}: *args and **kwargs cannot be replicated")
        self._defaults = tuple(
            _MISSING if p.default is p.empty else p.default for p in self._params
        )
        self._args_decoder: msgspec.msgpack.Decoder[Any] | None = None
        self._result_type: Any = None
        self._value_decoder: msgspec.msgpack.Decoder[Any] | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @typing.overload
    def __get__(self, obj: None, objtype: type | None = None) -> _Method[S, P, R]: ...

    @typing.overload
    def __get__(self, obj: S, objtype: type | None = None) -> BoundMethod[P, R]: ...

    def __get__(
        self, obj: S | None, objtype: type | None = None
    ) -> _Method[S, P, R] | BoundMethod[P, R]:
        if obj is None:
            return self
        bound = BoundMethod(self, obj)
        # Kept in the instance's dict, which shadows this (non-data) descriptor: made
        # once per object and method, not once per call.
        obj.__dict__[self.name] = bound
        return bound

    # -- encoding --------------------------------------------------------------------------

    def _types(self) -> None:
        hints = typing.get_type_hints(self.fn)
        fields = [(p.name, hints.get(p.name, Any)) for p in self._params]
        args_type = msgspec.defstruct(
            f"{self.name}_args", fields, array_like=True, forbid_unknown_fields=True
        )
        self._args_decoder = msgspec.msgpack.Decoder(args_type)
        self._result_type = hints.get("return", Any)
        self._value_decoder = msgspec.msgpack.Decoder(self._result_type)

    def encode(self, obj_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
        """The call's bytes; ``TypeError`` if the arguments do not fit the signature."""
        if not kwargs and len(args) <= len(self._params):
            # The common case: positional arguments, the defaults for the rest.
            tail = self._defaults[len(args) :]
            if _MISSING not in tail:
                return _encoder.encode((obj_name, self.name, (*args, *tail)))
        bound = self._signature.bind(None, *args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())[1:]
        return _encoder.encode((obj_name, self.name, values))

    def decode_args(self, raw: bytes | msgspec.Raw) -> tuple[Any, ...]:
        """The arguments of a call; ``msgspec.ValidationError``/``DecodeError`` if bad."""
        return msgspec.structs.astuple(self.decode_args_struct(raw))

    def decode_args_struct(self, raw: bytes | msgspec.Raw) -> msgspec.Struct:
        """``decode_args`` as the method's argument struct (not tracked by the garbage
        collector unless an argument is a container)."""
        if self._args_decoder is None:
            self._types()
        assert self._args_decoder is not None
        args: msgspec.Struct = self._args_decoder.decode(raw)
        return args

    def decode(self, result: bytes) -> Any:
        """The caller's value of a result, or the exception it carries, raised."""
        decoder = self._value_decoder
        if decoder is None:
            self._types()
            decoder = self._value_decoder
            assert decoder is not None
        return _decode_result(result, decoder)


def replicated(fn: Callable[Concatenate[S, P], R]) -> _Method[S, P, R]:
    """Mark a method as a command: it runs on every replica, in log order.

    On an attached instance, ``await obj.method(...)`` returns the method's return
    value once the call is chosen, durable on a quorum and applied.
    """
    return _Method(fn, "command")


def query(fn: Callable[Concatenate[S, P], R]) -> _Method[S, P, R]:
    """Mark a method as a linearizable read-only query (it never enters the log)."""
    return _Method(fn, "query")


def encode_call(method: Any, *args: Any, **kwargs: Any) -> bytes:
    """The bytes of a call of ``method`` (an attached object's replicated method, e.g.
    ``counter.incr``), without submitting it: for sessions that retry by hand."""
    desc = _descriptor(method)
    owner: Replicated = method._pyxos_object
    return desc.encode(owner._pyxos_name, args, kwargs)


def _descriptor(method: Any) -> _Method[Any, Any, Any]:
    desc = getattr(method, "_pyxos_method", None)
    if not isinstance(desc, _Method):
        raise TypeError(f"{method!r} is not a @replicated or @query method")
    return desc


def decode_result(result: bytes, kind: Any = Any) -> Any:
    """Decode a result as ``kind``, or raise the exception it carries."""
    return _decode_result(result, msgspec.msgpack.Decoder(kind))


_OK_PREFIX: Final = b"\x92\xc3"
"""How every ``[true, value]`` result begins (a msgpack array of 2, ``true``)."""


def _decode_result(result: bytes, decoder: msgspec.msgpack.Decoder[Any]) -> Any:
    if result[:2] == _OK_PREFIX:
        # The common case: the value alone, without the pair and its Raw.
        try:
            return decoder.decode(result[2:])
        except msgspec.DecodeError:
            pass  # decoded again below, to raise what it always raised
    try:
        ok, raw = _result_decoder.decode(result)
    except msgspec.DecodeError:
        raise ReplicatedError("BadResult", f"not an object result: {result[:40]!r}") from None
    if ok:
        return decoder.decode(raw)
    name, message = _error_decoder.decode(raw)
    exc = _BUILTIN_ERRORS.get(name)
    if exc is not None:
        raise exc(message)
    raise ReplicatedError(name, message)


def _ok(value: Any) -> bytes:
    try:
        return _encoder.encode((True, value))
    except (TypeError, OverflowError) as e:
        return _fail("TypeError", f"the result cannot be serialised: {e}")


def _fail(kind: str, message: str) -> bytes:
    return _encoder.encode((False, (kind, message)))


class Replicated:
    """Base class of replicated objects: annotated fields are the replicated state.

    ``__init__(**fields)`` sets each field from its keyword or a copy of its class
    default. A subclass defining ``__init__`` must call ``super().__init__()``.
    """

    _pyxos_fields: ClassVar[dict[str, Any]] = {}
    _pyxos_methods: ClassVar[dict[str, _Method[Any, Any, Any]]] = {}
    _pyxos_state: ClassVar[type[msgspec.Struct] | None] = None
    _pyxos_state_decoder: ClassVar[msgspec.msgpack.Decoder[Any] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: dict[str, Any] = {}
        methods: dict[str, _Method[Any, Any, Any]] = {}
        for klass in reversed(cls.__mro__):
            if klass is Replicated or not issubclass(klass, Replicated):
                continue
            for name, ann in inspect.get_annotations(klass).items():
                text = ann if isinstance(ann, str) else repr(ann)
                if name.startswith("_") or "ClassVar" in text:
                    continue
                fields[name] = klass.__dict__.get(name, _MISSING)
            for name, value in klass.__dict__.items():
                if isinstance(value, _Method):
                    methods[name] = value
        cls._pyxos_fields = fields
        cls._pyxos_methods = methods
        cls._pyxos_state = None
        cls._pyxos_state_decoder = None

    def __init__(self, **fields: Any) -> None:
        for name, default in type(self)._pyxos_fields.items():
            if name in fields:
                value = fields.pop(name)
            elif default is _MISSING:
                raise TypeError(f"{type(self).__name__}: field {name!r} needs a value")
            else:
                value = copy.deepcopy(default)
            setattr(self, name, value)
        if fields:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(fields)}")
        self._pyxos_binding: Binding | None = None
        self._pyxos_submit: Callable[..., Any] | None = None  # the binding's, if any
        self._pyxos_name = ""
        self._pyxos_host: ObjectHost | None = None

    def on_log_tick(self) -> None:
        """Called on every replica when a tick is applied (``pyxos.embedded``); a
        subclass may override it (deterministically) to age its state."""

    @property
    def log_time(self) -> int:
        """Commands applied by this object's host so far (0 when not hosted)."""
        host = self._pyxos_host
        return 0 if host is None else host.log_time

    @classmethod
    def _pyxos_resolve(cls) -> None:
        """Build the state's msgspec type from the field annotations (once)."""
        if cls._pyxos_state is not None:
            return
        hints = typing.get_type_hints(cls)
        spec = []
        for name in cls._pyxos_fields:
            kind = hints.get(name, Any)
            if _holds_a_set(kind, set()):
                raise TypeError(
                    f"{cls.__name__}.{name}: set fields are not allowed, nor sets inside "
                    "a field (iteration order depends on the hash seed; use a dict or a "
                    "sorted list)"
                )
            spec.append((name, kind))
        cls._pyxos_state = msgspec.defstruct(f"{cls.__name__}State", spec, array_like=True)
        cls._pyxos_state_decoder = msgspec.msgpack.Decoder(cls._pyxos_state)
        for m in cls._pyxos_methods.values():
            m._types()

    def _pyxos_snapshot(self) -> bytes:
        cls = type(self)
        cls._pyxos_resolve()
        assert cls._pyxos_state is not None
        state = cls._pyxos_state(**{name: getattr(self, name) for name in cls._pyxos_fields})
        return _encoder.encode(state)

    def _pyxos_decode_state(self, data: bytes | msgspec.Raw) -> dict[str, Any]:
        cls = type(self)
        cls._pyxos_resolve()
        assert cls._pyxos_state_decoder is not None
        state = cls._pyxos_state_decoder.decode(data)
        return {name: getattr(state, name) for name in cls._pyxos_fields}


def _holds_a_set(kind: Any, seen: set[int]) -> bool:
    """Whether the annotation ``kind`` is a ``set`` or ``frozenset``, or holds one
    anywhere: in its type arguments (``dict[str, set[str]]``, ``Optional[frozenset]``)
    or in the fields of a ``msgspec.Struct`` or dataclass it names."""
    if id(kind) in seen:
        return False
    seen.add(id(kind))
    origin = typing.get_origin(kind) or kind
    if isinstance(origin, type) and issubclass(origin, set | frozenset):
        return True
    if any(_holds_a_set(arg, seen) for arg in typing.get_args(kind)):
        return True
    if isinstance(kind, type) and (
        issubclass(kind, msgspec.Struct) or dataclasses.is_dataclass(kind)
    ):
        try:
            hints = typing.get_type_hints(kind)
        except Exception:  # an annotation that does not resolve: msgspec will say
            return False
        return any(_holds_a_set(h, seen) for h in hints.values())
    return False


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


class _HostSnapshot(msgspec.Struct, frozen=True, array_like=True):
    version: int
    log_time: int
    objects: dict[str, msgspec.Raw]


_host_snapshot_decoder = msgspec.msgpack.Decoder(_HostSnapshot)


class _Parsed(msgspec.Struct, gc=False):
    """A validated call kept for its apply. Not tracked by the garbage collector (it
    holds long-lived objects and an argument struct, and is in no cycle): thousands of
    calls in flight then trigger no collections while they wait to be chosen."""

    obj: Any
    method: Any
    args: Any


_VALIDATED_MAX: Final = 1 << 15
"""Most validated calls an object host keeps for their apply (then it starts over)."""
_VALIDATED_BYTES: Final = 512
"""Larger calls are decoded again by apply (their copy costs more than the parse)."""


class ObjectHost:
    """The application that holds a node's replicated objects, by name.

    Implements the replication layer's application contract: ``apply`` runs a command
    body, ``query`` a query body, ``validate`` refuses calls that do not decode or name
    no such method, ``snapshot``/``restore`` cover every object's fields and the log
    time. Every replica must host the same names with the same classes.
    """

    def __init__(self, objects: Mapping[str, Replicated]) -> None:
        for name, obj in objects.items():
            if not isinstance(obj, Replicated):
                raise TypeError(f"{name!r}: {type(obj).__name__} is not a Replicated object")
            if name == TICK_OBJECT:
                raise ValueError("an object's name must not be empty")
            type(obj)._pyxos_resolve()
            if obj._pyxos_host is not None and obj._pyxos_host is not self:
                raise ValueError(f"{name!r} is already hosted by another node")
            obj._pyxos_host = self
            obj._pyxos_name = name
        self.objects: Final[dict[str, Replicated]] = dict(objects)
        """The hosted objects by name."""
        self.log_time = 0
        """Commands applied so far (ticks included): the replicas' shared clock."""
        # Calls validated here (the leader validates every command it proposes, then
        # applies it once chosen): their parse, taken by ``apply`` instead of decoding
        # the same bytes again. Each parse serves one apply (popped), so a mutable
        # argument is never shared; small calls only, and at most _VALIDATED_MAX of
        # them (for calls that never come back to apply: a lost leadership, a retry).
        self._validated: dict[bytes, _Parsed] = {}

    def bind(self, binding: Binding) -> None:
        """Send every hosted object's calls to ``binding`` from now on."""
        submit = getattr(binding, "submit", None)
        for obj in self.objects.values():
            obj._pyxos_binding = binding
            obj._pyxos_submit = submit

    def unbind(self) -> None:
        """Detach every hosted object (its calls raise ``NotAttached``)."""
        for obj in self.objects.values():
            obj._pyxos_binding = None
            obj._pyxos_submit = None

    def _lookup(
        self, name: str, method: str, kind: str
    ) -> tuple[Replicated, _Method[Any, Any, Any]]:
        obj = self.objects.get(name)
        if obj is None:
            raise LookupError(f"no replicated object {name!r} here")
        m = type(obj)._pyxos_methods.get(method)
        if m is None or m.kind != kind:
            raise LookupError(f"{type(obj).__name__} has no {kind} {method!r}")
        return obj, m

    def _resolve(
        self, name: str, method: str, raw: msgspec.Raw, kind: str
    ) -> tuple[Replicated, _Method[Any, Any, Any], Any]:
        obj, m = self._lookup(name, method, kind)
        return obj, m, m.decode_args(raw)

    # -- the application contract ---------------------------------------------------------

    def validate(self, command: bytes) -> str | None:
        """Why ``command`` must not enter the log, or None if it may."""
        try:
            name, method, raw = _call_decoder.decode(command)
            if name != TICK_OBJECT:
                obj, m = self._lookup(name, method, "command")
                args = m.decode_args_struct(raw)
                if type(command) is bytes and len(command) <= _VALIDATED_BYTES:
                    validated = self._validated
                    if len(validated) >= _VALIDATED_MAX:
                        validated.clear()
                    validated[command] = _Parsed(obj, m, args)
        except (msgspec.DecodeError, LookupError) as e:
            return f"bad call: {e}"
        return None

    def apply(self, command: bytes) -> bytes:
        """Run one command on its object; the result (or the exception) as bytes."""
        self.log_time += 1
        parsed = self._validated.pop(command, None) if type(command) is bytes else None
        if parsed is not None:
            obj, m, args = parsed.obj, parsed.method, msgspec.structs.astuple(parsed.args)
        else:
            try:
                name, method, raw = _call_decoder.decode(command)
                if name == TICK_OBJECT:
                    for one in self.objects.values():
                        one.on_log_tick()
                    return _ok(self.log_time)
                obj, m, args = self._resolve(name, method, raw, "command")
            except (msgspec.DecodeError, LookupError) as e:
                return _fail("Refused", f"bad call: {e}")
        try:
            value = m.fn(obj, *args)
        except _PROCESS_EXITS:
            raise
        except BaseException as e:  # a body's own BaseException too: the same everywhere
            return _fail(type(e).__name__, str(e))
        return _ok(value)

    def query(self, q: bytes) -> bytes:
        """Run one query on its object (it must not change the state)."""
        try:
            obj, m, args = self._resolve(*_call_decoder.decode(q), "query")
        except (msgspec.DecodeError, LookupError) as e:
            return _fail("Refused", f"bad query: {e}")
        try:
            value = m.fn(obj, *args)
        except _PROCESS_EXITS:
            raise
        except BaseException as e:  # a body's own BaseException too: the same everywhere
            return _fail(type(e).__name__, str(e))
        return _ok(value)

    def reject(self, error: str) -> bytes:
        """How a refusal of the replication layer reads as a result."""
        return _fail("Refused", error)

    def snapshot(self) -> bytes:
        """Every object's fields and the log time, as one msgpack blob."""
        objects = {name: msgspec.Raw(obj._pyxos_snapshot()) for name, obj in self.objects.items()}
        return _encoder.encode(_HostSnapshot(SNAPSHOT_VERSION, self.log_time, objects))

    def restore(self, data: bytes) -> None:
        """Replace every object's fields with a ``snapshot()``'s; ``ValueError`` if it
        is not one of these objects (nothing is changed then)."""
        try:
            snap = _host_snapshot_decoder.decode(data)
            if snap.version != SNAPSHOT_VERSION:
                raise ValueError(f"object snapshot version {snap.version}")
            if set(snap.objects) != set(self.objects):
                raise ValueError(
                    f"the snapshot holds objects {sorted(snap.objects)}, "
                    f"this node {sorted(self.objects)}"
                )
            states = {
                name: obj._pyxos_decode_state(snap.objects[name])
                for name, obj in self.objects.items()
            }
        except msgspec.DecodeError as e:  # ValidationError included
            raise ValueError(f"not an object snapshot: {e}") from None
        for name, fields in states.items():
            obj = self.objects[name]
            for field, value in fields.items():
                setattr(obj, field, value)
        self.log_time = snap.log_time


def tick_command() -> bytes:
    """A command that only advances the log time (see ``pyxos.embedded``)."""
    return _encoder.encode((TICK_OBJECT, "", []))
