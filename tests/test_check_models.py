"""The linearizability checker against any model: counter, queue, lock, and the KV model
cross-checked with the register checker (pyxos.check.generic, pyxos.check.models).

Four kinds of evidence:

- generated histories, linearizable by construction (each op takes effect at a drawn
  instant inside its interval; unknown ones at one, or never) must pass;
- sequential histories (no two ops overlap, all outcomes known) have exactly one
  possible order, so replaying them is an exact oracle: mutated ones (an output
  swapped or changed, two ops reordered) must get the replay's verdict, which the
  tests count as failing cases;
- small random concurrent histories against a brute-force search straight from the
  definition (every order respecting real time, unknown ops in or out);
- hand-worked concurrent cases per model, with the reasoning written next to them.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyxos.check.generic import check_model, kv_operation, run_model_check
from pyxos.check.history import AppOperation, parse_app_line
from pyxos.check.linearizability import check_history
from pyxos.check.models import KV, MODELS, Counter, FifoQueue, Lock, Model, ModelOp

# --- building histories ----------------------------------------------------------------


def line(
    client: int,
    op: str,
    input: Any,
    output: Any,
    call: int,
    ret: int | None,
    ok: bool | None = True,
) -> dict[str, Any]:
    """One history line as JSON."""
    d: dict[str, Any] = {"client": client, "op": op, "input": input}
    if ret is not None and ok is not None:
        d["output"] = output
    d.update({"call": call, "return": ret, "ok": ok if ret is not None else None})
    return d


def parse(model: Model, lines: list[dict[str, Any]]) -> list[ModelOp]:
    """The lines as the checker reads them (through ``model.parse``)."""
    ops = []
    for d in lines:
        op = parse_app_line(json.dumps(d))
        inp, out = model.parse(op)
        ops.append(ModelOp(op, inp, out))
    return ops


def verdict(model: Model, lines: list[dict[str, Any]]) -> bool:
    result = check_model(model, parse(model, lines))
    assert not result.timed_out
    if not result.ok:
        result.describe(model)  # must not raise
    return result.ok


def to_json(model: Model, output: Any) -> Any:
    """A model output back as the JSON an application writes."""
    if isinstance(model, Lock) and isinstance(output, tuple):
        if len(output) == 2:
            return {"owner": output[0], "token": output[1]}
        return dict(zip(("holder", "token", "expires", "now"), output, strict=True))
    return output


# Inputs per model, as (op, input JSON); small domains so that collisions are common.
def inputs(model: Model) -> st.SearchStrategy[tuple[str, Any]]:
    if isinstance(model, Counter):
        return st.one_of(
            st.just(("incr", None)),
            st.tuples(st.just("add"), st.integers(-3, 3)),
            st.just(("get", None)),
        )
    if isinstance(model, FifoQueue):
        return st.one_of(
            st.tuples(st.just("enqueue"), st.sampled_from([1, 2, "x", [1, 2], {"a": 1}])),
            st.sampled_from([("dequeue", None), ("dequeue", None), ("peek", None), ("len", None)]),
        )
    if isinstance(model, Lock):
        owners = st.sampled_from(["a", "b", "c"])
        tokens = st.integers(0, 3)
        ttls = st.integers(1, 4)
        return st.one_of(
            st.builds(lambda o, t: ("acquire", {"owner": o, "ttl": t}), owners, ttls),
            st.builds(lambda o, t: ("release", {"owner": o, "token": t}), owners, tokens),
            st.builds(
                lambda o, t, d: ("renew", {"owner": o, "token": t, "ttl": d}), owners, tokens, ttls
            ),
            st.just(("holder", {})),
            st.just(("state", {})),
            st.just(("tick", None)),
            st.builds(
                lambda o, n: ("acquire", {"owner": o, "ttl": 2, "lock": n}),
                owners,
                st.sampled_from(["m", "n"]),
            ),
        )
    assert isinstance(model, KV)
    keys = st.sampled_from(["x", "y"])
    vals = st.sampled_from(["a", "b"])
    return st.one_of(
        st.builds(lambda k: ("get", {"key": k}), keys),
        st.builds(lambda k, v: ("put", {"key": k, "value": v}), keys, vals),
        st.builds(lambda k: ("delete", {"key": k}), keys),
        st.builds(
            lambda k, e, v: ("cas", {"key": k, "expected": e, "value": v}),
            keys,
            st.sampled_from([None, "a", "b"]),
            vals,
        ),
    )


# Plausible wrong outputs, per op.
def outputs(model: Model, op: str) -> st.SearchStrategy[Any]:
    if isinstance(model, Counter):
        return st.integers(-4, 6)
    if isinstance(model, FifoQueue):
        if op == "len":
            return st.integers(0, 3)
        if op == "enqueue":
            return st.integers(1, 3)
        return st.sampled_from([None, 1, 2, "x", [1, 2], {"a": 1}])
    if isinstance(model, Lock):
        if op == "acquire":
            return st.sampled_from([None, 1, 2, 3])
        if op in ("release", "renew"):
            return st.booleans()
        if op == "tick":
            return st.none()
        if op == "holder":
            return st.sampled_from([None, {"owner": "a", "token": 1}, {"owner": "b", "token": 2}])
        return st.builds(
            lambda h, t, e, n: {"holder": h, "token": t, "expires": e, "now": n},
            st.sampled_from([None, "a", "b"]),
            st.integers(0, 2),
            st.integers(0, 5),
            st.integers(0, 4),
        )
    if op == "get":
        return st.sampled_from([None, "a", "b"])
    if op == "cas":
        return st.booleans()
    return st.none()


ALL = [MODELS["counter"], MODELS["queue"], MODELS["lock"], MODELS["kv"]]
IDS = [m.name for m in ALL]


@st.composite
def executions(draw: st.DrawFn, model: Model, max_ops: int = 40) -> list[dict[str, Any]]:
    """A history of a real execution: op i takes effect at time 10 * i (if at all),
    inside its drawn interval; about one op in eight has an unknown outcome."""
    states: dict[Any, Any] = {}
    lines = []
    for i in range(draw(st.integers(1, max_ops))):
        op, inp = draw(inputs(model))
        point = 100 + 10 * i
        call = point - draw(st.integers(0, 45))
        ret: int | None = point + draw(st.integers(0, 45))
        unknown = draw(st.integers(0, 7)) == 0
        if unknown:
            ret = None
        probe = parse_app_line(json.dumps(line(0, op, inp, None, 0, None)))
        model_inp, _ = model.parse(probe)
        if not unknown or draw(st.booleans()):
            key = getattr(model, "partition", lambda _: None)(model_inp)
            states[key], out = model.step(states.get(key, model.init()), model_inp)
        else:
            out = None  # never took effect
        lines.append(line(i % 5, op, inp, to_json(model, out), call, ret))
    return lines


@st.composite
def sequential(draw: st.DrawFn, model: Model) -> list[dict[str, Any]]:
    """A sequential history (no overlap, all outcomes known), legal by construction."""
    states: dict[Any, Any] = {}
    lines = []
    for i in range(draw(st.integers(2, 25))):
        op, inp = draw(inputs(model))
        probe = parse_app_line(json.dumps(line(0, op, inp, None, 0, None)))
        model_inp, _ = model.parse(probe)
        key = getattr(model, "partition", lambda _: None)(model_inp)
        states[key], out = model.step(states.get(key, model.init()), model_inp)
        lines.append(line(i % 3, op, inp, to_json(model, out), 10 * i, 10 * i + 5))
    return lines


def replay(model: Model, lines: list[dict[str, Any]]) -> bool:
    """The exact verdict for a sequential history: its one order, replayed."""
    states: dict[Any, Any] = {}
    ops = sorted(parse(model, lines), key=lambda m: m.op.call)
    for m in ops:
        key = getattr(model, "partition", lambda _: None)(m.input)
        states[key], out = model.step(states.get(key, model.init()), m.input)
        if not model.equal(out, m.output):  # type: ignore[attr-defined]
            return False
    return True


# --- linearizable by construction ------------------------------------------------------


@pytest.mark.parametrize("model", ALL, ids=IDS)
def test_histories_of_real_executions_pass(model: Model) -> None:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(executions(model))
    def run(lines: list[dict[str, Any]]) -> None:
        assert verdict(model, lines), check_model(model, parse(model, lines)).describe(model)

    run()


# --- mutated sequential histories: the replay is the oracle -----------------------------

FAILING_CASES: dict[str, int] = {}
RUNS: dict[str, int] = {}


def _mutants(model: Model, kind: str) -> Callable[[], None]:
    @settings(
        max_examples=50,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(sequential(model), st.data())
    def run(lines: list[dict[str, Any]], data: st.DataObject) -> None:
        assert verdict(model, lines)
        i = data.draw(st.integers(0, len(lines) - 1))
        if kind == "swap":
            # Swap the outputs of two ops of the same kind.
            same = [k for k, d in enumerate(lines) if d["op"] == lines[i]["op"] and k != i]
            assume(same)
            j = data.draw(st.sampled_from(same))
            lines[i]["output"], lines[j]["output"] = lines[j]["output"], lines[i]["output"]
        elif kind == "change":
            new = data.draw(outputs(model, lines[i]["op"]))
            assume(new != lines[i]["output"] or type(new) is not type(lines[i]["output"]))
            lines[i]["output"] = new
        else:
            # Reorder: op j now happens where op i did, and ops i..j-1 one slot later.
            i, j = sorted((i, data.draw(st.integers(0, len(lines) - 1).filter(lambda k: k != i))))
            times = [(d["call"], d["return"]) for d in lines[i : j + 1]]
            moved = [lines[j], *lines[i:j]]
            for d, (c, r) in zip(moved, times, strict=True):
                d["call"], d["return"] = c, r
        expected = replay(model, lines)
        assert verdict(model, lines) == expected
        RUNS[f"{model.name}/{kind}"] = RUNS.get(f"{model.name}/{kind}", 0) + 1
        if not expected:
            FAILING_CASES[f"{model.name}/{kind}"] = FAILING_CASES.get(f"{model.name}/{kind}", 0) + 1

    return run


@pytest.mark.parametrize("kind", ["swap", "change", "reorder"])
@pytest.mark.parametrize("model", ALL, ids=IDS)
def test_mutated_sequential_histories_get_the_replays_verdict(model: Model, kind: str) -> None:
    before = FAILING_CASES.get(f"{model.name}/{kind}", 0)
    _mutants(model, kind)()
    # The mutations must have produced histories that fail, not only harmless ones.
    failing = FAILING_CASES.get(f"{model.name}/{kind}", 0) - before
    runs = RUNS.get(f"{model.name}/{kind}", 0)
    print(f"{model.name}/{kind}: {failing} of {runs} mutated histories not linearizable")
    assert failing >= 3


# --- small concurrent histories against brute force ------------------------------------


def brute_force(model: Model, ops: list[ModelOp]) -> bool:
    """Linearizable, straight from the definition: some order respecting real time
    (an op that returned before another was called comes first) in which every op of
    known outcome outputs what it did; unknown ops may be left out."""
    items = [m for m in ops if not (m.op.ok is False and m.op.return_ is not None)]
    n = len(items)
    required = sum(1 << i for i, m in enumerate(items) if not m.op.unknown)
    rets = [float("inf") if m.op.unknown else m.op.return_ for m in items]
    equal = model.equal

    part = getattr(model, "partition", lambda _: None)

    @functools.cache
    def search(done: int, states: tuple[tuple[Any, Any], ...]) -> bool:
        if done & required == required:
            return True
        for i, m in enumerate(items):
            if done >> i & 1:
                continue
            if any(not done >> j & 1 and j != i and rets[j] < m.op.call for j in range(n)):
                continue
            by_key = dict(states)
            key = part(m.input)
            ns, out = model.step(by_key.get(key, model.init()), m.input)
            if not m.op.unknown and not equal(out, m.output):
                continue
            by_key[key] = ns
            if search(done | 1 << i, tuple(sorted(by_key.items(), key=repr))):
                return True
        return False

    return search(0, ())


@st.composite
def small_histories(draw: st.DrawFn, model: Model) -> list[dict[str, Any]]:
    lines = []
    for i in range(draw(st.integers(1, 6))):
        op, inp = draw(inputs(model))
        call = draw(st.integers(0, 20))
        ret = None if draw(st.integers(0, 4)) == 0 else call + draw(st.integers(0, 10))
        ok = draw(st.sampled_from([True, True, True, True, False, None]))
        lines.append(line(i, op, inp, draw(outputs(model, op)), call, ret, ok))
    return lines


@pytest.mark.parametrize("model", ALL, ids=IDS)
def test_verdict_agrees_with_brute_force(model: Model) -> None:
    seen = {True: 0, False: 0}

    @settings(
        max_examples=150,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(small_histories(model))
    def run(lines: list[dict[str, Any]]) -> None:
        ops = parse(model, lines)
        expected = brute_force(model, ops)
        assert check_model(model, ops).ok == expected
        seen[expected] += 1

    run()
    print(f"{model.name}: brute force agrees; linearizable {seen[True]}, not {seen[False]}")
    assert seen[True] >= 10 and seen[False] >= 10, seen


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(small_histories(MODELS["kv"]), executions(MODELS["kv"], 30)))
def test_kv_model_agrees_with_the_register_checker(lines: list[dict[str, Any]]) -> None:
    """The generic search with the KV model and the specialised register checker are
    two implementations of one specification."""
    model = MODELS["kv"]
    ops = parse(model, lines)
    generic = check_model(model, ops).ok
    kv = [o for m in ops if (o := kv_operation(m)) is not None]
    assert check_history(kv).ok == generic


# --- hand-worked cases -------------------------------------------------------------------

C = MODELS["counter"]
Q = MODELS["queue"]
L = MODELS["lock"]


def test_counter_lost_update_is_rejected() -> None:
    # Two incrs overlap; both saw 0 and answered 1: one update was lost.
    assert not verdict(C, [line(1, "incr", None, 1, 0, 10), line(2, "incr", None, 1, 5, 15)])
    # One answered 2: either order explains it.
    assert verdict(C, [line(1, "incr", None, 2, 0, 10), line(2, "incr", None, 1, 5, 15)])


def test_counter_read_sees_before_or_after_a_concurrent_add() -> None:
    for seen in (0, 5):
        assert verdict(C, [line(1, "add", 5, 5, 0, 10), line(2, "get", None, seen, 2, 8)])
    assert not verdict(C, [line(1, "add", 5, 5, 0, 10), line(2, "get", None, 3, 2, 8)])
    # After the add returned, 0 is stale.
    assert not verdict(C, [line(1, "add", 5, 5, 0, 10), line(2, "get", None, 0, 11, 12)])


def test_counter_unknown_add_takes_effect_once_or_never_and_cannot_be_undone() -> None:
    unknown = line(1, "add", 5, None, 0, None)
    assert verdict(C, [unknown, line(2, "get", None, 0, 10, 20), line(2, "get", None, 5, 30, 40)])
    assert verdict(C, [unknown, line(2, "get", None, 0, 10, 20)])
    # Seen, then gone: it cannot un-happen.
    assert not verdict(
        C, [unknown, line(2, "get", None, 5, 10, 20), line(2, "get", None, 0, 30, 40)]
    )
    # At most once.
    assert not verdict(C, [unknown, line(2, "get", None, 10, 10, 20)])
    # An unknown get constrains nothing; a definitely failed add took no effect.
    assert verdict(C, [line(1, "get", None, None, 0, None), line(2, "get", None, 0, 5, 6)])
    assert not verdict(C, [line(1, "add", 5, None, 0, 3, ok=False), line(2, "get", None, 5, 5, 6)])


def test_queue_concurrent_enqueues_may_come_out_in_either_order() -> None:
    a, b = line(1, "enqueue", "a", 2, 0, 10), line(2, "enqueue", "b", 1, 5, 15)
    later = [line(3, "dequeue", None, "b", 20, 30), line(3, "dequeue", None, "a", 31, 40)]
    assert verdict(Q, [a, b, *later])
    # The lengths they saw must agree with the order: both cannot have been first.
    assert not verdict(Q, [line(1, "enqueue", "a", 1, 0, 10), b, *later])
    # If a was enqueued before b was called, a comes out first.
    a1, b_after = line(1, "enqueue", "a", 1, 0, 10), line(2, "enqueue", "b", 2, 11, 15)
    assert not verdict(Q, [a1, b_after, *later])


def test_queue_duplicate_or_invented_items_are_rejected() -> None:
    a = line(1, "enqueue", "a", 1, 0, 10)
    assert not verdict(
        Q, [a, line(2, "dequeue", None, "a", 20, 30), line(3, "dequeue", None, "a", 25, 35)]
    )
    assert not verdict(Q, [a, line(2, "dequeue", None, "z", 20, 30)])
    # Empty is fine while the enqueue runs, not after it returned.
    assert verdict(Q, [a, line(2, "dequeue", None, None, 5, 8)])
    assert not verdict(Q, [a, line(2, "dequeue", None, None, 11, 12)])


def test_queue_peek_and_len() -> None:
    ops = [
        line(1, "enqueue", [1, 2], 1, 0, 10),
        line(1, "enqueue", {"k": True}, 2, 11, 20),
        line(2, "peek", None, [1, 2], 21, 22),
        line(2, "len", None, 2, 23, 24),
        line(2, "dequeue", None, [1, 2], 25, 26),
        line(2, "peek", None, {"k": True}, 27, 28),
    ]
    assert verdict(Q, ops)
    ops[5] = line(2, "peek", None, {"k": 1}, 27, 28)  # true is not 1
    assert not verdict(Q, ops)


def test_queue_unknown_enqueue_may_show_up_late() -> None:
    unknown = line(1, "enqueue", "x", None, 0, None)
    assert verdict(Q, [unknown, line(2, "len", None, 0, 5, 6), line(2, "dequeue", None, "x", 7, 8)])
    assert not verdict(
        Q, [unknown, line(2, "dequeue", None, "x", 5, 6), line(2, "dequeue", None, "x", 7, 8)]
    )


def acq(client: int, owner: str, ttl: int, out: int | None, call: int, ret: int | None) -> Any:
    return line(client, "acquire", {"owner": owner, "ttl": ttl}, out, call, ret)


def rel(client: int, owner: str, token: int, out: bool, call: int, ret: int | None) -> Any:
    return line(client, "release", {"owner": owner, "token": token}, out, call, ret)


def state(holder: str | None, token: int, expires: int, now: int, call: int, ret: int) -> Any:
    out = {"holder": holder, "token": token, "expires": expires, "now": now}
    return line(9, "state", {}, out, call, ret)


def holder(owner: str | None, token: int, call: int, ret: int) -> Any:
    out = None if owner is None else {"owner": owner, "token": token}
    return line(9, "holder", {}, out, call, ret)


def test_lock_expires_after_ttl_commands_of_log_time() -> None:
    # a acquires at log time 1 with ttl 2: held through log time 3. b is refused at
    # times 2 and 3 and granted token 2 at time 4.
    ops = [
        acq(1, "a", 2, 1, 0, 1),
        acq(2, "b", 5, None, 2, 3),
        acq(2, "b", 5, None, 4, 5),
        acq(2, "b", 5, 2, 6, 7),
    ]
    assert verdict(L, ops)
    assert not verdict(L, [ops[0], ops[1], acq(2, "b", 5, 2, 4, 5)])  # one command too soon
    # a's lock expired: its release with token 1 is refused, and b still holds.
    assert verdict(L, [*ops, rel(1, "a", 1, False, 8, 9), holder("b", 2, 10, 11)])
    assert not verdict(L, [*ops, rel(1, "a", 1, True, 8, 9)])
    # Ticks move the clock like commands.
    ticks = [line(5, "tick", None, None, 2, 3), line(5, "tick", {}, None, 4, 5)]
    assert verdict(L, [ops[0], *ticks, acq(2, "b", 5, 2, 6, 7)])
    assert not verdict(L, [ops[0], ticks[0], acq(2, "b", 5, 2, 6, 7)])


def test_lock_renewal_keeps_the_token_and_extends_the_lease() -> None:
    ops = [
        acq(1, "a", 1, 1, 0, 1),  # time 1, held through 2
        acq(2, "b", 1, None, 2, 3),  # time 2: refused
        acq(1, "a", 2, 1, 4, 5),  # time 3: expired, so a new grant... with a new token
    ]
    assert not verdict(L, ops)
    ops[2] = acq(1, "a", 2, 2, 4, 5)
    assert verdict(L, ops)
    renewals = (
        acq(1, "a", 2, 1, 2, 3),
        line(1, "renew", {"owner": "a", "token": 1, "ttl": 2}, True, 2, 3),
    )
    for renewal in renewals:  # at time 2: held through 4
        renew = [acq(1, "a", 2, 1, 0, 1), renewal, acq(2, "b", 1, None, 4, 5)]
        assert verdict(L, [*renew, acq(2, "b", 1, None, 6, 7), acq(2, "b", 1, 2, 8, 9)])
        assert not verdict(L, [*renew, acq(2, "b", 1, 2, 6, 7)])
    # A renew of a grant that is not current does nothing (and is false).
    stale = line(1, "renew", {"owner": "a", "token": 1, "ttl": 9}, False, 4, 5)
    assert verdict(L, [*ops, stale, holder("a", 2, 6, 7)])


def test_lock_mutual_exclusion_and_fencing() -> None:
    # Overlapping acquires, both granted, while the first cannot have expired.
    assert not verdict(L, [acq(1, "a", 5, 1, 0, 10), acq(2, "b", 5, 2, 5, 15)])
    # A lock without fencing: a new holder with the old token.
    ops = [acq(1, "a", 1, 1, 0, 1), acq(2, "b", 1, None, 2, 3), acq(2, "b", 1, 1, 4, 5)]
    assert not verdict(L, ops)
    # A release with a stale token must not free the new holder's lock.
    ok = [acq(1, "a", 1, 1, 0, 1), acq(2, "b", 1, None, 2, 3), acq(2, "b", 3, 2, 4, 5)]
    assert verdict(L, [*ok, rel(1, "a", 1, False, 6, 7), acq(3, "c", 1, None, 8, 9)])
    assert not verdict(L, [*ok, rel(1, "a", 1, True, 6, 7)])
    # After a release the next grant gets the next token.
    assert verdict(L, [*ok, rel(2, "b", 2, True, 6, 7), acq(3, "c", 1, 3, 8, 9)])


def test_lock_unknown_command_moves_the_log_clock_if_it_took_effect() -> None:
    # a holds through time 2 (ttl 1). A grant to b needs the lock expired at b's time:
    # possible only if c's unknown release (false, a no-op) took effect between, at 2.
    base = [acq(1, "a", 1, 1, 0, 1), rel(3, "c", 7, False, 2, None)]
    assert verdict(L, [*base, acq(2, "b", 1, 2, 10, 11)])
    assert not verdict(L, [base[0], acq(2, "b", 1, 2, 10, 11)])


def test_lock_queries_do_not_move_the_clock_and_locks_are_independent() -> None:
    ops = [
        acq(1, "a", 1, 1, 0, 1),
        holder("a", 1, 2, 3),
        state("a", 1, 2, 1, 4, 5),
        acq(2, "b", 1, None, 6, 7),  # time 2: still held, the queries did not count
        line(1, "acquire", {"owner": "b", "ttl": 1, "lock": "other"}, 1, 8, 9),
        # Expired at time 3 but shown until the next command on the lock.
        holder("a", 1, 10, 11),
        state("a", 1, 2, 2, 12, 13),
    ]
    assert verdict(L, ops)
    assert verdict(L, [*ops, line(5, "tick", None, None, 14, 15), state(None, 1, 2, 3, 16, 17)])
    ops.append(line(1, "acquire", {"owner": "c", "ttl": 1, "lock": "other"}, 1, 20, 21))
    result = check_model(L, parse(L, ops))
    assert not result.ok and result.partition == "other"
    assert "NOT linearizable (lock) partition 'other'" in result.describe(L)


# --- the history format and the CLI ----------------------------------------------------


def write(tmp_path: Path, lines: list[Any]) -> str:
    path = tmp_path / "h.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def run(path: str, model: str) -> tuple[int, str]:
    out = io.StringIO()
    code = run_model_check(path, model, out)
    return code, out.getvalue()


@pytest.mark.parametrize(
    ("model", "bad", "reason"),
    [
        (
            "counter",
            {"client": 1, "op": "incr", "call": 0, "return": 1, "ok": True, "output": 1},
            '"input"',
        ),
        ("counter", line(1, "incr", None, None, 0, 1) | {"output": msgspec.UNSET}, '"output"'),
        ("counter", line(1, "add", "5", 5, 0, 1), "integer"),
        ("counter", line(1, "incr", None, True, 0, 1), "integer"),
        ("counter", line(1, "mul", 2, 2, 0, 1), "unknown counter operation 'mul'"),
        ("queue", line(1, "enqueue", None, None, 0, 1), "null"),
        ("queue", line(1, "len", None, "2", 0, 1), "integer"),
        ("queue", line(1, "enqueue", 5, None, 0, 1), "length"),
        ("lock", line(1, "acquire", {"owner": "a"}, 1, 0, 1), '"ttl"'),
        ("lock", line(1, "acquire", {"owner": "a", "ttl": 0}, 1, 0, 1), "at least 1"),
        ("lock", line(1, "release", {"owner": "a", "token": 1}, 1, 0, 1), "true or false"),
        ("lock", line(1, "renew", {"owner": "a", "token": 1}, True, 0, 1), '"ttl"'),
        ("lock", line(1, "state", {}, {"holder": "a"}, 0, 1), "state outputs"),
        ("lock", line(1, "holder", {}, {"owner": "a"}, 0, 1), "holder outputs"),
        ("lock", line(1, "tick", None, 3, 0, 1), "null"),
        ("lock", {"client": 1, "op": "state", "input": {}, "call": 0, "ok": True}, "return"),
        ("kv", line(1, "cas", {"key": "k", "value": "v"}, True, 0, 1), '"expected"'),
        ("kv", line(1, "get", {"key": "k"}, 1, 0, 1), "string or null"),
        (
            "counter",
            {
                "client": 1,
                "op": "get",
                "key": "k",
                "value": None,
                "call": 0,
                "return": 1,
                "output": None,
                "ok": True,
            },
            "--model kv",
        ),
        ("counter", line(1, "get", None, 0, 0, 1) | {"extra": 1}, "extra"),
    ],
)
def test_a_line_lacking_what_the_model_needs_is_exit_2_with_the_reason(
    tmp_path: Path, model: str, bad: dict[str, Any], reason: str
) -> None:
    bad = {k: v for k, v in bad.items() if v is not msgspec.UNSET}
    good = line(9, "get", None, 0, 0, 1) if model == "counter" else None
    path = write(tmp_path, [x for x in (good, bad) if x is not None])
    code, out = run(path, model)
    assert code == 2, out
    assert reason in out and "line" in out


def test_exit_codes_and_models_by_import_path(tmp_path: Path) -> None:
    good = [line(1, "incr", None, 1, 0, 1), line(2, "get", None, 1, 2, 3)]
    assert run(write(tmp_path, good), "counter")[0] == 0
    assert run(write(tmp_path, good), "pyxos.check.models:Counter")[0] == 0
    assert run(write(tmp_path, [good[0], line(2, "get", None, 2, 2, 3)]), "counter")[0] == 1
    assert run(write(tmp_path, []), "counter")[0] == 2
    code, out = run(write(tmp_path, good), "no.such.module:M")
    assert code == 2 and "cannot import" in out
    code, out = run(write(tmp_path, good), "pyxos.check.models:resolve_model")
    assert code == 2 and "not a model" in out
    code, out = run(write(tmp_path, good), "stack")
    assert code == 2 and "unknown model" in out


def test_kv_histories_mix_both_line_forms(tmp_path: Path) -> None:
    legacy = {
        "client": 1,
        "op": "put",
        "key": "k",
        "value": "a",
        "expected": None,
        "call": 0,
        "return": 5,
        "output": None,
        "ok": True,
    }
    app = [
        line(2, "cas", {"key": "k", "expected": "a", "value": "b"}, True, 6, 8),
        line(3, "get", {"key": "k"}, "b", 9, 10),
        # A definitely failed cas in application form took no effect (not "compare failed").
        line(4, "cas", {"key": "k", "expected": "zz", "value": "c"}, None, 11, 12, ok=False),
    ]
    assert run(write(tmp_path, [legacy, *app]), "kv")[0] == 0
    app[1] = line(3, "get", {"key": "k"}, "a", 9, 10)
    code, out = run(write(tmp_path, [legacy, *app]), "kv")
    assert code == 1 and "key 'k'" in out


def test_timeout_gives_unknown() -> None:
    ops = parse(C, [line(i, "incr", None, i + 1, 0, 1000) for i in range(12)])
    result = check_model(C, ops, timeout_s=0.0)
    assert result.ok or result.timed_out  # tiny searches may finish before the first check


def test_app_operation_round_trips() -> None:
    d = line(1, "enqueue", {"a": [1, None]}, None, 3, 9)
    op = parse_app_line(json.dumps(d))
    assert isinstance(op, AppOperation) and op.input == {"a": [1, None]}
    assert msgspec.json.decode(msgspec.json.encode(op)) == d


# --- the shipped replicated objects follow the models ----------------------------------


def _object_call(model: Model, op: str, inp: Any) -> tuple[str, Any, tuple[Any, ...], bool]:
    """(object name, method, args, is_query) of one model operation on the objects of
    ``pyxos.objects.builtin``; a tick is the host's tick command."""
    if isinstance(model, Counter):
        if op == "get":
            return "c", "get", (), True
        return "c", "incr", (1 if op == "incr" else inp,), False
    if isinstance(model, FifoQueue):
        method = {"enqueue": "put", "dequeue": "get", "peek": "peek", "len": "size"}[op]
        return "q", method, (inp,) if op == "enqueue" else (), op in ("peek", "len")
    args = {
        "acquire": lambda d: (d["owner"], d["ttl"]),
        "renew": lambda d: (d["owner"], d["token"], d["ttl"]),
        "release": lambda d: (d["owner"], d["token"]),
    }.get(op, lambda d: ())(inp or {})
    return "l", op, args, op in ("holder", "state")


@pytest.mark.parametrize("model", ALL[:3], ids=IDS[:3])
def test_the_builtin_objects_answer_as_their_models_say(model: Model) -> None:
    """The replicated Counter, Queue and Lock (applied directly, as every replica
    does) give, operation for operation, the outputs their models give."""
    from pyxos.objects.base import ObjectHost, decode_result, encode_call, tick_command
    from pyxos.objects.builtin import Counter as CounterObject
    from pyxos.objects.builtin import Lock as LockObject
    from pyxos.objects.builtin import Queue as QueueObject

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(inputs(model), min_size=1, max_size=30))
    def run(calls: list[tuple[str, Any]]) -> None:
        host = ObjectHost({"c": CounterObject(), "q": QueueObject(), "l": LockObject()})
        state = model.init()
        for op, inp in calls:
            if isinstance(inp, dict) and inp.get("lock"):
                continue  # one lock object here
            name, method, args, is_query = _object_call(model, op, inp)
            if op == "tick":
                raw = host.apply(tick_command())
                got: Any = None
            else:
                data = encode_call(getattr(host.objects[name], method), *args)
                raw = host.query(data) if is_query else host.apply(data)
                got = msgspec.to_builtins(decode_result(raw))
            doc = line(0, op, inp, got, 0, 1)
            model_inp, observed = model.parse(parse_app_line(json.dumps(doc)))
            state, expected = model.step(state, model_inp)
            assert model.equal(expected, observed), (op, inp, expected, observed)  # type: ignore[attr-defined]

    run()
