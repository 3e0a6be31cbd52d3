"""The application's determinism across processes: a run's chosen log replayed under
other hash seeds.

Theory of operation
-------------------
Every replica of a simulated run lives in one Python process, so they all share one
hash seed (``PYTHONHASHSEED``, random per process unless set). An application whose
state or results depend on something a process fixes for itself (the iteration order
of a ``set`` of ``str`` or ``bytes``, ``id()``, an object's address in a ``repr``)
behaves the same on all of them, and the divergence and convergence checks of
``pyxos.sim.service``, which compare the replicas with each other, cannot see it. A
real cluster runs each replica in a process of its own, and there its replicas would
diverge (docs/architecture.md, *The application contract*: ``apply`` may depend only
on the state and the command).

So once a run has passed every other check, :func:`check_determinism` takes the log
it chose (the value of every slot below the replicas' applied slot, as bytes, a
configuration entry as the no-op a replica applies in its place) and has *replayers*,
child processes each started with a different ``PYTHONHASHSEED``
(:func:`replay_hash_seeds`), apply it slot by slot to a fresh instance of the
application in the replication layer (``ReplicatedApp``, as a replica does). After
every slot a replayer records the state digest and the digest of the slot's results,
exactly as a replica's audit reports them (``ServiceNode.audit_with``), and at the end
the application's ``snapshot()`` bytes. The comparison, first slot first:

1. the replayers with each other: their hash seeds are fixed, so this verdict does not
   depend on the hash seed of the process that ran the simulation, and the seed's
   replay command reproduces it;
2. the replayers with the run's replicas (the first report per slot the divergence
   monitor kept) and with the replicas' final ``snapshot()`` bytes.

The first difference is a ``determinism`` violation naming the slot and the hash seeds.

A replayer's clocks also run ahead by ``CLOCK_SHIFT`` times its hash seed (more than a
year, an hour, a minute and a second each; :func:`_shift_clocks`): the replicas of a
simulated run all read one real clock within the same second, so an application that
reads it coarsely (the hour, today's date) is alike on all of them; the replayers read
clocks that far apart, and disagree. For the same reason ``socket.gethostname()`` and
``platform.node()`` carry the replayer's hash seed (:func:`_rename_host`).

Keeping it fast: one replayer per hash seed serves every run of a sweep (started at
the first check, kept in a module-level pool, ended when the process exits or its
stdin closes); the request goes to every replayer before any answer is read, so they
replay at the same time. Framing on the pipes: a 4-byte big-endian length, then a
msgpack document (:class:`ReplayRequest`, :class:`ReplayAnswer`): never pickle. The
application is named by a :class:`Recipe` (a ``module:function`` that returns the
run's store factory, and its string arguments), which the replayer imports itself;
``sys_path`` carries the simulating process's import path (the current directory for
``--app examples.counter:Counter``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import IO, Any, Final

import msgspec

from pyxos.check.invariants import DivergenceMonitor, Violation
from pyxos.core.membership import is_config_entry
from pyxos.statemachine.loader import import_spec
from pyxos.statemachine.replicated import ReplicatedApp
from pyxos.statemachine.service import results_digest

__all__ = [
    "DEFAULT_HASH_SEEDS",
    "REPLAY_TIMEOUT",
    "Recipe",
    "ReplayAnswer",
    "ReplayCheck",
    "ReplayRequest",
    "check_determinism",
    "chosen_log",
    "close_replayers",
    "replay",
    "replay_hash_seeds",
]

DEFAULT_HASH_SEEDS: Final = 2
"""Replayers (other hash seeds) a run is checked with unless told otherwise."""
REPLAY_TIMEOUT: Final = 60.0
"""Seconds (wall clock) a replayer may take to answer one run before it is a violation."""

_HEADER: Final = 4
_MAX_FRAME: Final = 1 << 30


class Recipe(msgspec.Struct, frozen=True):
    """How a replayer builds the run's application: ``factory`` (``module:function``)
    called with ``args`` returns the run's store factory (a callable making a fresh
    application, or its whole ``ReplicatedApp``)."""

    factory: str
    args: dict[str, str | None] = {}


class ReplayRequest(msgspec.Struct, frozen=True):
    """Replay ``values`` (slot 0 first) on a fresh application made by ``recipe``."""

    recipe: Recipe
    values: list[bytes]
    sys_path: list[str] = []


class ReplayAnswer(msgspec.Struct, frozen=True):
    """What a replay produced: per slot the state digest after it and the digest of
    its results, the application's final ``snapshot()`` bytes; or ``error``."""

    hash_seed: str
    states: list[int] = []
    results: list[int] = []
    snapshot: bytes = b""
    error: str | None = None


class ReplayCheck(msgspec.Struct, frozen=True):
    """A run's cross-process check: which application, under which hash seeds."""

    recipe: Recipe
    hash_seeds: tuple[int, ...] = (1, 2)


_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(ReplayRequest)
_answer_decoder = msgspec.msgpack.Decoder(ReplayAnswer)


def replay_hash_seeds(count: int = DEFAULT_HASH_SEEDS) -> tuple[int, ...]:
    """``count`` hash seeds for the replayers: 1, 2, ... but this process's own, if
    ``PYTHONHASHSEED`` fixes it (so every replayer runs under a seed the replicas did
    not)."""
    own = os.environ.get("PYTHONHASHSEED", "")
    seeds: list[int] = []
    candidate = 1
    while len(seeds) < count:
        if str(candidate) != own:
            seeds.append(candidate)
        candidate += 1
    return tuple(seeds)


def chosen_log(first: dict[int, tuple[int, bytes]], slots: int) -> list[bytes]:
    """The values of slots ``0 .. slots-1`` from the safety monitor's record
    (``slot -> (node, value)``) as a replica applies them (a configuration entry is a
    no-op to the application), up to the first slot the record lacks."""
    values: list[bytes] = []
    for slot in range(slots):
        seen = first.get(slot)
        if seen is None:
            break
        value = seen[1]
        values.append(b"" if value[:1] == b"\xc1" and is_config_entry(value) else value)
    return values


def replay(request: ReplayRequest, factory: Callable[[], Any]) -> ReplayAnswer:
    """Apply ``request.values`` to a fresh application from ``factory``, recording what
    a replica's audit reports after every slot (this process's hash seed)."""
    made = factory()
    state: ReplicatedApp[Any] = made if isinstance(made, ReplicatedApp) else ReplicatedApp(made)
    state.track_digest()
    states: list[int] = []
    results: list[int] = []
    for slot, value in enumerate(request.values):
        applied = state.apply(slot, value)
        states.append(state.state_digest())
        results.append(results_digest(applied))
    return ReplayAnswer(
        os.environ.get("PYTHONHASHSEED", "random"), states, results, state.app.snapshot()
    )


# -- the replayer processes ---------------------------------------------------------------


def _write_frame(out: IO[bytes], doc: bytes) -> None:
    out.write(len(doc).to_bytes(_HEADER, "big") + doc)
    out.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    """``n`` bytes from ``fd``; fewer only at end of file. ``TimeoutError`` past
    ``deadline`` (monotonic)."""
    chunks: list[bytes] = []
    left = n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None) -> bytes | None:
    """One frame's document, or None at end of file."""
    header = _read_exact(fd, _HEADER, deadline)
    if len(header) < _HEADER:
        return None
    size = int.from_bytes(header, "big")
    if size > _MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes")
    doc = _read_exact(fd, size, deadline)
    if len(doc) < size:
        return None
    return doc


class _Replayer:
    """One child process under one hash seed, serving replays until its stdin closes."""

    def __init__(self, hash_seed: int) -> None:
        self.hash_seed = hash_seed
        env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyxos.sim.determinism"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def send(self, doc: bytes) -> None:
        assert self.proc.stdin is not None
        _write_frame(self.proc.stdin, doc)

    def receive(self, deadline: float) -> ReplayAnswer:
        assert self.proc.stdout is not None
        doc = _read_frame(self.proc.stdout.fileno(), deadline)
        if doc is None:
            raise EOFError(f"exited with status {self.proc.wait()}")
        return _answer_decoder.decode(doc)

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # a dead replayer's pipe
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


_pool: dict[int, _Replayer] = {}


def close_replayers() -> None:
    """End every replayer process this process started (also done at exit)."""
    while _pool:
        _, replayer = _pool.popitem()
        replayer.close()


atexit.register(close_replayers)


def _replay_everywhere(request: ReplayRequest, hash_seeds: Sequence[int]) -> list[ReplayAnswer]:
    """The answer of one replayer per hash seed (started if need be), all replaying
    at once; a replayer that fails is ended (the next request starts a new one) and
    its failure is a violation."""
    doc = _encoder.encode(request)
    replayers: list[_Replayer] = []
    for h in hash_seeds:
        replayer = _pool.get(h)
        if replayer is None or replayer.proc.poll() is not None:
            if replayer is not None:
                replayer.close()  # it died between two runs: its pipes go too
            replayer = _pool[h] = _Replayer(h)
        replayers.append(replayer)
    failure: str | None = None
    for replayer in replayers:
        try:
            replayer.send(doc)
        except OSError as e:
            failure = failure or f"PYTHONHASHSEED={replayer.hash_seed}: sending failed: {e}"
    answers: list[ReplayAnswer] = []
    deadline = time.monotonic() + REPLAY_TIMEOUT
    for replayer in replayers:
        try:
            answers.append(replayer.receive(deadline))
        except (OSError, EOFError, TimeoutError, ValueError, msgspec.DecodeError) as e:
            what = f"no answer within {REPLAY_TIMEOUT:.0f}s" if isinstance(e, TimeoutError) else e
            failure = failure or f"PYTHONHASHSEED={replayer.hash_seed}: {what}"
    if failure is not None:
        for replayer in replayers:
            _pool.pop(replayer.hash_seed, None)
            replayer.proc.kill()
            replayer.close()
        raise Violation("determinism", f"the replay process failed: {failure}")
    return answers


# -- the check ----------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return f"{len(data)} bytes, blake2b {blake2b(data, digest_size=8).hexdigest()}"


def _first_difference(a: ReplayAnswer, b: ReplayAnswer) -> tuple[int, str] | None:
    """(slot, what) where two replays first differ, or None."""
    for slot, (sa, sb, ra, rb) in enumerate(
        zip(a.states, b.states, a.results, b.results, strict=False)
    ):
        if ra != rb:
            return slot, f"its results have digests {ra:016x} and {rb:016x}"
        if sa != sb:
            return slot, f"the state after it has digests {sa:016x} and {sb:016x}"
    if len(a.states) == len(b.states) and a.snapshot != b.snapshot:
        return len(a.states) - 1, (
            f"after it, the last, the snapshot() bytes differ: "
            f"{_digest(a.snapshot)} and {_digest(b.snapshot)}"
        )
    return None


def _versus_replicas(
    answer: ReplayAnswer, divergence: DivergenceMonitor, snapshot: bytes | None
) -> tuple[int, str] | None:
    """(slot, what) where a replay first differs from what the run's replicas
    reported, or None."""
    for slot, (state, results) in enumerate(zip(answer.states, answer.results, strict=True)):
        seen = divergence.results.get(slot)
        if seen is not None and seen[1] != results:
            return slot, (
                f"its results have digest {results:016x} in the replay, "
                f"{seen[1]:016x} at node {seen[0]} of the run"
            )
        reported = divergence.states.get(slot + 1)
        if reported is not None and reported[1] != state:
            return slot, (
                f"the state after it has digest {state:016x} in the replay, "
                f"{reported[1]:016x} at node {reported[0]} of the run"
            )
    if snapshot is not None and answer.snapshot != snapshot:
        return len(answer.states) - 1, (
            f"after it, the last, the snapshot() bytes are {_digest(answer.snapshot)} in "
            f"the replay, {_digest(snapshot)} at the replicas"
        )
    return None


_HINT: Final = (
    "the application depends on the process it runs in (the iteration order of a set "
    "of str or bytes, id(), the clock, ...), which replicas in one process share: "
    "docs/architecture.md, The application contract"
)


def check_determinism(
    check: ReplayCheck,
    values: list[bytes],
    divergence: DivergenceMonitor,
    snapshot: bytes | None,
) -> None:
    """Replay ``values`` (the chosen log, slot 0 first) under each of the check's hash
    seeds and compare (see the module notes); raise a ``determinism``
    :class:`Violation` at the first difference. ``snapshot`` is the replicas' final
    ``snapshot()`` bytes after exactly these slots (None: not compared)."""
    if not check.hash_seeds or not values:
        return
    sys_path = [p or os.getcwd() for p in sys.path]
    request = ReplayRequest(check.recipe, values, sys_path)
    answers = _replay_everywhere(request, check.hash_seeds)
    for answer in answers:
        if answer.error is not None:
            raise Violation(
                "determinism",
                f"the replay with PYTHONHASHSEED={answer.hash_seed} failed: {answer.error}",
            )
    ref = answers[0]
    for other in answers[1:]:
        diff = _first_difference(ref, other)
        if diff is not None:
            raise Violation(
                "determinism",
                f"the {len(values)} chosen slots, replayed on a fresh application in "
                f"processes with PYTHONHASHSEED={ref.hash_seed} and {other.hash_seed}, first "
                f"differ at slot {diff[0]}: {diff[1]}; {_HINT}",
            )
    diff = _versus_replicas(ref, divergence, snapshot)
    if diff is not None:
        raise Violation(
            "determinism",
            f"the {len(values)} chosen slots, replayed on a fresh application in a process "
            f"with PYTHONHASHSEED={ref.hash_seed}, first differ from the run's replicas at "
            f"slot {diff[0]}: {diff[1]}; {_HINT}",
        )


# -- the replayer's side --------------------------------------------------------------------

CLOCK_SHIFT: Final = 400 * 86400.0 + 3600.0 + 60.0 + 1.5
"""Seconds a replayer's clocks run ahead per unit of its hash seed: more than a year,
an hour, a minute and a second, so replayers with hash seeds 1 and 2 read a different
year, day, hour, minute and second from every clock (and from the replicas')."""


def _shift_clocks(shift: float) -> None:
    """Make the clocks an application may read (``time.time``, ``time.monotonic``,
    ``time.perf_counter`` and their ``_ns`` forms, ``datetime.datetime.now``/``today``/
    ``utcnow`` and ``datetime.date.today``) run ``shift`` seconds ahead in this process.

    Every replica of a simulated run reads one real clock within the same second: an
    application that reads it coarsely (``int(time.time()) // 3600``, today's date)
    behaves alike on all of them, and would diverge on a real cluster only at an hour's
    or a day's boundary. The replayers read clocks that far apart, so the replay check
    sees it. Done before the application is imported, so ``from time import time``
    takes the shifted one too."""
    import datetime as dt

    ns = int(shift * 1e9)
    for name in ("time", "monotonic", "perf_counter"):
        real = getattr(time, name)
        real_ns = getattr(time, f"{name}_ns")
        setattr(time, name, lambda real=real: real() + shift)
        setattr(time, f"{name}_ns", lambda real_ns=real_ns: real_ns() + ns)
    delta = dt.timedelta(seconds=shift)
    real_datetime, real_date = dt.datetime, dt.date

    class _Datetime(real_datetime):  # type: ignore[misc,valid-type]
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:
            return real_datetime.now(tz) + delta

        @classmethod
        def today(cls) -> dt.datetime:
            return real_datetime.today() + delta

        @classmethod
        def utcnow(cls) -> dt.datetime:
            return real_datetime.now(dt.UTC).replace(tzinfo=None) + delta

    class _Date(real_date):  # type: ignore[misc,valid-type]
        @classmethod
        def today(cls) -> dt.date:
            return (real_datetime.now() + delta).date()

    dt.datetime = _Datetime  # type: ignore[misc]
    dt.date = _Date  # type: ignore[misc]


def _rename_host(suffix: str) -> None:
    """Make ``socket.gethostname()`` and ``platform.node()`` answer this host's name
    with ``suffix`` appended: the replicas of a simulated run share one host, a real
    cluster's usually do not, so an application whose state depends on the host's name
    would pass every in-process check."""
    import platform
    import socket

    name = f"{socket.gethostname()}.{suffix}"
    socket.gethostname = lambda: name
    platform.node = lambda: name


def _serve() -> None:
    """Answer replay requests on stdin until it closes (the replayer's main loop)."""
    # The protocol owns the real stdout; whatever the application prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer.fileno()
    seed_env = os.environ.get("PYTHONHASHSEED", "")
    _shift_clocks(CLOCK_SHIFT * (int(seed_env) if seed_env.isdigit() else 1))
    _rename_host(f"replay-{seed_env or 'random'}")
    factories: dict[bytes, Callable[[], Any]] = {}
    hash_seed = os.environ.get("PYTHONHASHSEED", "random")
    while True:
        doc = _read_frame(stdin, None)
        if doc is None:
            return
        try:
            request = _request_decoder.decode(doc)
            for p in request.sys_path:
                if p not in sys.path:
                    sys.path.append(p)
            key = _encoder.encode(request.recipe)
            factory = factories.get(key)
            if factory is None:
                make = import_spec(request.recipe.factory, "replay factory")
                assert callable(make)
                factory = factories[key] = make(**request.recipe.args)
            answer = replay(request, factory)
        except Exception as e:  # the answer says what went wrong; the replayer lives on
            answer = ReplayAnswer(hash_seed, error=f"{type(e).__name__}: {e}")
        _write_frame(out, _encoder.encode(answer))


if __name__ == "__main__":
    _serve()
