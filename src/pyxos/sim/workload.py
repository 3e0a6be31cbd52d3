"""Workloads: what the simulated clients of an application do, in the model's terms.

Theory of operation
-------------------
``pyxos sim app`` drives any application (docs/architecture.md, *The application
contract*) and judges the client history against a sequential model
(``pyxos.check.models``). Neither knows the other: the application speaks bytes, the
model speaks history JSON (an operation's name, its input, its output). A *workload*
is the small piece that speaks both, the one optional hook an application supplies to
be simulated::

    def workload(rng: random.Random, client: WorkloadClient) -> SimOp: ...

Called once per operation a simulated client starts, it picks the operation with
``rng`` (the client's own seeded generator: every choice must come from it, so a seed
replays) and returns a :class:`SimOp`: the history ``op`` and ``input`` the model
reads, the ``command`` bytes the application receives (``query=True``: a read-only
query, answered without the log), and ``output``, which turns the application's result
bytes into the output the model compares (an exception there is a violation of the
run: the application answered something its workload cannot read). ``client.memory``
is the client's own scratch space across its operations (a lock's last token, say);
``output`` may write to it when the answer arrives.

Where a workload comes from (``resolve_app``): ``--workload module:function``; else a
``sim_workload`` attribute of the application's factory (a static method of the class);
else, for the built-in objects of ``pyxos.objects`` (and the short names ``counter``,
``queue``, ``lock``, ``dict``), the ones below. A ``Replicated`` class runs in an
:class:`~pyxos.objects.base.ObjectHost` of its own, as one object. The model comes
from ``--model`` (a name of ``pyxos.check.models.MODELS`` or ``module:attr``), else a
``sim_model`` attribute of the factory, else the built-in object's.

Answers the application *refuses* (``validate``, an exception in ``apply``: the
``ClientReply`` carries an error) are definite failures, ``ok: false``: the command had
no effect. A workload should not provoke them; the built-in ones never do.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec

from pyxos.check.models import Model, resolve_model
from pyxos.objects import Counter, Lock, ObjectHost, Queue, Replicated, ReplicatedDict
from pyxos.statemachine.base import Application
from pyxos.statemachine.loader import import_spec, load_factory, make_app

__all__ = [
    "BUILTIN_APPS",
    "SimApp",
    "SimOp",
    "Workload",
    "WorkloadClient",
    "counter_workload",
    "dict_workload",
    "lock_workload",
    "queue_workload",
    "resolve_app",
]


@dataclass(frozen=True, slots=True)
class SimOp:
    """One operation a simulated client runs (see the module notes)."""

    op: str
    """The history's ``op``: the name the model knows the operation by."""
    input: Any
    """The history's ``input`` (JSON) for the model."""
    command: bytes
    """What the client sends the application: a command, or a query if ``query``."""
    output: Callable[[bytes], Any]
    """The model's output (JSON) from the application's result bytes."""
    query: bool = False
    """A read-only query: answered from the leader's state, never through the log."""


@dataclass(slots=True)
class WorkloadClient:
    """The simulated client a workload chooses for."""

    id: int
    """The client's process id (unique in a run)."""
    memory: dict[str, Any] = field(default_factory=dict)
    """The client's own scratch space, kept across its operations."""

    @property
    def name(self) -> str:
        """A name for the client in commands (a lock owner, a value's author)."""
        return f"c{self.id}"


Workload = Callable[[random.Random, WorkloadClient], SimOp]
"""Picks a client's next operation (see the module notes)."""


# -- the built-in objects ---------------------------------------------------------------------


def counter_workload(rng: random.Random, client: WorkloadClient) -> SimOp:
    """:class:`pyxos.objects.Counter` against the ``counter`` model: incr, add n
    (``incr(n)``, or ``decr(-n)`` below zero), and get (a query)."""
    roll = rng.random()
    if roll < 0.3:
        return SimOp("get", None, Counter.get.encode("counter", (), {}), Counter.get.decode, True)
    if roll < 0.6:
        return SimOp("incr", None, Counter.incr.encode("counter", (), {}), Counter.incr.decode)
    n = rng.randint(-3, 5)
    if n < 0:
        return SimOp("add", n, Counter.decr.encode("counter", (-n,), {}), Counter.decr.decode)
    return SimOp("add", n, Counter.incr.encode("counter", (n,), {}), Counter.incr.decode)


def queue_workload(rng: random.Random, client: WorkloadClient) -> SimOp:
    """:class:`pyxos.objects.Queue` against the ``queue`` model: enqueue (``put``) of
    items unique in the run, dequeue (``get``), and the queries peek and len (``size``)."""
    roll = rng.random()
    if roll < 0.4:
        n = client.memory["enqueued"] = client.memory.get("enqueued", 0) + 1
        item = f"{client.name}-{n}"
        return SimOp("enqueue", item, Queue.put.encode("queue", (item,), {}), Queue.put.decode)
    if roll < 0.75:
        return SimOp("dequeue", None, Queue.get.encode("queue", (), {}), Queue.get.decode)
    if roll < 0.88:
        return SimOp("peek", None, Queue.peek.encode("queue", (), {}), Queue.peek.decode, True)
    return SimOp("len", None, Queue.size.encode("queue", (), {}), Queue.size.decode, True)


LOCK_TTL = (1, 4)
"""The range of ``ttl`` (in the lock's log time) the lock workload asks for: short, so
that grants expire while their holders still believe in them."""


def lock_workload(rng: random.Random, client: WorkloadClient) -> SimOp:
    """:class:`pyxos.objects.Lock` against the ``lock`` model: acquire, renew and
    release (mostly with the client's own last token, sometimes a stale or a wrong
    one), and the queries holder and state."""
    owner = client.name
    memory = client.memory
    roll = rng.random()
    if roll < 0.4:
        ttl = rng.randint(*LOCK_TTL)

        def granted(result: bytes) -> Any:
            token = Lock.acquire.decode(result)
            if token is not None:
                memory["token"] = token
            return token

        command = Lock.acquire.encode("lock", (owner, ttl), {})
        return SimOp("acquire", {"owner": owner, "ttl": ttl}, command, granted)
    if roll < 0.7:
        token = memory.get("token", 0)
        if rng.random() < 0.2:
            token += rng.choice((-1, 1))  # a stale or a made-up token
        if rng.random() < 0.5:
            command = Lock.release.encode("lock", (owner, token), {})
            return SimOp("release", {"owner": owner, "token": token}, command, Lock.release.decode)
        ttl = rng.randint(*LOCK_TTL)
        command = Lock.renew.encode("lock", (owner, token, ttl), {})
        doc = {"owner": owner, "token": token, "ttl": ttl}
        return SimOp("renew", doc, command, Lock.renew.decode)
    if roll < 0.85:
        command = Lock.holder.encode("lock", (), {})
        return SimOp("holder", {}, command, _as_json(Lock.holder.decode), True)
    command = Lock.state.encode("lock", (), {})
    return SimOp("state", {}, command, _as_json(Lock.state.decode), True)


DICT_KEYS = 3
"""Keys the dict workload's clients share."""


def dict_workload(rng: random.Random, client: WorkloadClient) -> SimOp:
    """:class:`pyxos.objects.ReplicatedDict` against the ``kv`` model: get (a query),
    put (``set``), delete (``pop``; the model's delete outputs nothing) and cas (with
    a value this client read, or ``absent=True`` for an expected absence)."""
    key = f"k{rng.randrange(DICT_KEYS)}"
    memory = client.memory
    seen: list[str] = memory.setdefault("seen", [])
    n = memory["written"] = memory.get("written", 0) + 1
    value = f"{client.name}-{n}"
    roll = rng.random()
    if roll < 0.35:

        def read(result: bytes) -> Any:
            found = ReplicatedDict.get.decode(result)
            if isinstance(found, str):
                seen.append(found)
            return found

        command = ReplicatedDict.get.encode("dict", (key,), {})
        return SimOp("get", {"key": key}, command, read, True)
    if roll < 0.7:
        command = ReplicatedDict.set.encode("dict", (key, value), {})
        return SimOp("put", {"key": key, "value": value}, command, ReplicatedDict.set.decode)
    if roll < 0.8:
        command = ReplicatedDict.pop.encode("dict", (key,), {})
        return SimOp("delete", {"key": key}, command, _nothing(ReplicatedDict.pop.decode))
    expected = rng.choice(seen) if seen and rng.random() < 0.7 else None
    command = ReplicatedDict.cas.encode("dict", (key, expected, value, expected is None), {})
    doc = {"key": key, "expected": expected, "value": value}
    return SimOp("cas", doc, command, ReplicatedDict.cas.decode)


def _as_json(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``decode``, its value as plain JSON (structs as objects)."""
    return lambda result: msgspec.to_builtins(decode(result))


def _nothing(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``decode`` (so an error in the result still raises), its value dropped."""

    def output(result: bytes) -> None:
        decode(result)

    return output


@dataclass(frozen=True, slots=True)
class _ObjectKind:
    name: str
    """The object's name in its host, and the short name of ``--app``."""
    cls: type[Replicated]
    model: str
    workload: Workload


_OBJECTS: tuple[_ObjectKind, ...] = (
    _ObjectKind("counter", Counter, "counter", counter_workload),
    _ObjectKind("queue", Queue, "queue", queue_workload),
    _ObjectKind("lock", Lock, "lock", lock_workload),
    _ObjectKind("dict", ReplicatedDict, "kv", dict_workload),
)

BUILTIN_APPS: dict[str, str] = {kind.name: kind.cls.__name__ for kind in _OBJECTS}
"""The short names ``--app`` takes, and the ``pyxos.objects`` class each runs."""


# -- resolving --app, --model and --workload --------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimApp:
    """An application ready to simulate: how to make it, its model and its workload."""

    factory: Callable[[], Application]
    """Makes one replica's application."""
    model: Model
    workload: Workload
    object_class: type[Replicated] | None = None
    """The ``Replicated`` class it hosts, if it is one of those."""
    object_name: str = ""
    """That object's name in its host."""

    def with_object_class(self, cls: type[Replicated]) -> SimApp:
        """The same, hosting ``cls`` instead (a variant of the object's class)."""
        name = self.object_name
        return SimApp(_host(name, cls), self.model, self.workload, cls, name)


def _host(name: str, cls: type[Replicated]) -> Callable[[], Application]:
    def factory() -> Application:
        return ObjectHost({name: cls()})

    return factory


def resolve_app(app: str, model: str | None = None, workload: str | None = None) -> SimApp:
    """The application ``app`` names (a short name of :data:`BUILTIN_APPS`, or
    ``module:Factory``), with its model and workload (see the module notes for where
    each comes from). ``ValueError`` saying what is missing or wrong."""
    kind = _object_kind(app)
    if kind is not None:
        cls = kind.cls if ":" not in app else cast(type[Replicated], import_spec(app, "app"))
        factory = _host(kind.name, cls)
        default_model: Any = kind.model
        default_workload: Any = kind.workload
        obj: Any = cls
    else:
        factory = load_factory(app)
        make_app(app)  # its factory runs and makes an application, or a clear error now
        obj = factory
        default_model = getattr(factory, "sim_model", None)
        default_workload = getattr(factory, "sim_workload", None)
    chosen_model = _model(app, model, default_model)
    chosen_workload = _workload(app, workload, default_workload)
    if kind is not None:
        return SimApp(factory, chosen_model, chosen_workload, obj, kind.name)
    return SimApp(factory, chosen_model, chosen_workload)


def _object_kind(app: str) -> _ObjectKind | None:
    """The built-in object ``app`` runs (a short name, or a ``Replicated`` class that is
    one of them or derives from one), or None."""
    for kind in _OBJECTS:
        if app == kind.name:
            return kind
    if ":" not in app:
        known = ", ".join(BUILTIN_APPS)
        raise ValueError(f"app {app!r}: expected one of {known}, or 'module:Factory'")
    obj = import_spec(app, "app")
    if not (isinstance(obj, type) and issubclass(obj, Replicated)):
        return None
    for kind in _OBJECTS:
        if issubclass(obj, kind.cls):
            return kind
    raise ValueError(
        f"app {app!r}: {obj.__name__} is a Replicated class with no built-in workload; "
        "host it in an application of your own, with a workload (pyxos sim app --workload)"
    )


def _model(app: str, spec: str | None, default: Any) -> Model:
    if spec is not None:
        return resolve_model(spec)
    if isinstance(default, str):
        return resolve_model(default)
    if default is not None:
        model: Model = default
        return model
    raise ValueError(
        f"app {app!r}: no model to check its history against: pass --model (one of "
        "kv, counter, queue, lock, or module:attr), or give the factory a sim_model"
    )


def _workload(app: str, spec: str | None, default: Any) -> Workload:
    chosen = import_spec(spec, "workload") if spec is not None else default
    if chosen is None:
        raise ValueError(
            f"app {app!r}: no workload: pass --workload module:function (a function "
            "(rng, client) -> SimOp, see pyxos.sim.workload), or give the factory a "
            "sim_workload"
        )
    if not callable(chosen):
        raise ValueError(f"workload {spec!r}: not a function (rng, client) -> SimOp")
    return cast(Workload, chosen)
