"""The linearizability checker and the history format it reads.

Times are small integers (nanoseconds in real histories). ``W(...)`` builds one
operation; ``ret=None`` means the outcome is unknown.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyxos.check.history import (
    HistoryError,
    Operation,
    dump_history,
    load_history,
    op_to_json,
    parse_line,
)
from pyxos.check.linearizability import CheckResult, check_history, run_check


def W(
    kind: str,
    call: int,
    ret: int | None,
    *,
    value: str | None = None,
    expected: str | None = None,
    output: str | None = None,
    ok: bool | None = True,
    key: str = "k",
    client: int = 0,
) -> Operation:
    unknown = ret is None
    return Operation(
        client=client,
        op=kind,  # type: ignore[arg-type]
        key=key,
        value=value,
        expected=expected,
        call=call,
        return_=ret,
        output=None if unknown else output,
        ok=None if unknown else ok,
    )


def put(v: str, call: int, ret: int | None, **kw: Any) -> Operation:
    return W("put", call, ret, value=v, **kw)


def get(out: str | None, call: int, ret: int | None, **kw: Any) -> Operation:
    return W("get", call, ret, output=out, **kw)


def delete(call: int, ret: int | None, **kw: Any) -> Operation:
    return W("delete", call, ret, **kw)


def cas(
    exp: str | None, v: str, call: int, ret: int | None, ok: bool = True, **kw: Any
) -> Operation:
    return W("cas", call, ret, value=v, expected=exp, ok=ok, **kw)


def rejected(ops: list[Operation]) -> CheckResult:
    result = check_history(ops)
    assert not result.ok, "accepted a history that is not linearizable"
    assert not result.timed_out
    assert result.failing_key is not None and result.failing_key in result.describe()
    assert result.window and result.culprit in result.window
    return result


# --- Linearizable histories --------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check_history([])
    assert result.ok and result.keys_checked == 0 and result.ops_checked == 0


def test_sequential_history_of_every_kind_is_linearizable() -> None:
    ops = [
        get(None, 0, 1),
        put("a", 2, 3),
        get("a", 4, 5),
        cas("a", "b", 6, 7),
        cas("a", "c", 8, 9, ok=False),
        get("b", 10, 11),
        delete(12, 13),
        get(None, 14, 15),
        cas(None, "d", 16, 17),
        get("d", 18, 19),
    ]
    result = check_history(ops)
    assert result.ok, result.describe()
    assert result.keys_checked == 1 and result.ops_checked == len(ops)
    assert result.describe().startswith("linearizable")


def test_reads_overlapping_a_write_may_see_either_value() -> None:
    # The put takes effect somewhere in [0, 10]: before it absent, after it "a".
    ops = [put("a", 0, 10), get(None, 1, 2), get("a", 3, 4), get("a", 5, 12)]
    assert check_history(ops).ok


def test_concurrent_writes_take_effect_in_the_order_reads_show() -> None:
    ops = [put("a", 0, 10), put("b", 0, 10), get("b", 11, 12), get("b", 13, 14)]
    assert check_history(ops).ok
    ops = [put("a", 0, 10), put("b", 0, 10), get("a", 11, 12)]
    assert check_history(ops).ok


def test_a_cas_may_fail_because_of_a_concurrent_write() -> None:
    ops = [put("a", 0, 1), put("x", 2, 10), cas("a", "b", 3, 9, ok=False), get("x", 11, 12)]
    assert check_history(ops).ok


def test_keys_are_independent() -> None:
    ops = [
        put("a", 0, 1, key="k1"),
        put("b", 0, 1, key="k2"),
        get("a", 2, 3, key="k1"),
        get("b", 2, 3, key="k2"),
        get(None, 0, 1, key="k3"),
    ]
    result = check_history(ops)
    assert result.ok and result.keys_checked == 3


def test_unknown_write_that_took_effect_later() -> None:
    # The client gave up on the put at 1, but it took effect before 20.
    ops = [put("a", 0, None), get(None, 2, 3), get("a", 20, 21), get("a", 30, 31)]
    assert check_history(ops).ok


def test_unknown_write_that_never_took_effect() -> None:
    ops = [put("a", 0, 1), put("b", 2, None), get("a", 3, 4), get("a", 50, 51)]
    assert check_history(ops).ok


def test_unknown_delete_and_cas_may_take_effect() -> None:
    ops = [put("a", 0, 1), delete(2, None), get("a", 3, 4), get(None, 5, 6)]
    assert check_history(ops).ok
    ops = [put("a", 0, 1), cas("a", "b", 2, None), get("a", 3, 4), get("b", 5, 6)]
    assert check_history(ops).ok


def test_definitely_failed_requests_did_not_take_effect() -> None:
    ops = [put("a", 0, 1), put("b", 2, 3, ok=False), get("a", 4, 5), get("zz", 6, 7, ok=False)]
    assert check_history(ops).ok


# --- Violations ---------------------------------------------------------------------


def test_stale_read_is_rejected() -> None:
    ops = [put("a", 0, 1), put("b", 2, 3), get("a", 4, 5)]
    result = rejected(ops)
    assert result.culprit == ops[2]


def test_lost_write_is_rejected() -> None:
    # "b" was acknowledged, yet every later read sees the older value.
    ops = [put("a", 0, 1), put("b", 2, 3), get("a", 4, 5), get("a", 6, 7)]
    result = rejected(ops)
    assert result.culprit == ops[2]
    # An acknowledged first write never seen: reads keep finding the key absent.
    rejected([put("a", 0, 1), get(None, 2, 3)])


def test_read_of_a_value_before_its_write_was_called_is_rejected() -> None:
    ops = [get("a", 0, 1), put("a", 2, 3)]
    result = rejected(ops)
    assert result.window_from_start and result.culprit == ops[0]
    # Also when the write has an unknown outcome: it cannot act before its call.
    rejected([get("a", 0, 1), put("a", 2, None)])


def test_cas_reporting_the_wrong_outcome_is_rejected() -> None:
    rejected([put("a", 0, 1), cas("a", "b", 2, 3, ok=False)])  # it should have succeeded
    rejected([put("a", 0, 1), cas("x", "b", 2, 3, ok=True)])  # it should have failed
    rejected([cas("x", "b", 0, 1, ok=True)])  # the key was absent, not "x"
    rejected([put("a", 0, 1), cas(None, "b", 2, 3)])  # the key was not absent


def test_a_read_of_a_value_never_written_is_rejected_even_with_unknown_writes() -> None:
    base = [put("a", 0, 1), put("b", 2, None), get("b", 10, 11)]
    assert check_history(base).ok  # the unknown write took effect
    result = rejected([*base, get("zz", 12, 13)])
    assert result.culprit is not None and result.culprit.output == "zz"


def test_an_unknown_write_takes_effect_at_most_once() -> None:
    ops = [put("a", 0, None), put("b", 1, 2), get("a", 3, 4), put("c", 5, 6)]
    assert check_history(ops).ok
    rejected([*ops, get("a", 7, 8)])  # "a" again would need a second effect


def test_violation_in_a_long_history_gets_a_short_window_from_the_middle() -> None:
    ops = []
    for i in range(200):
        t = 10 * i
        ops += [put(f"v{i}", t, t + 4, client=1), get(f"v{i}", t + 5, t + 8, client=2)]
    stale = get("v150", 2005, 2008, client=3)
    result = rejected([*ops, stale])
    assert result.failing_key == "k"
    assert result.culprit == stale
    assert not result.window_from_start
    assert len(result.window) <= 4, result.describe()
    text = result.describe()
    assert "NOT linearizable" in text and "v150" in text and "=>" in text


def test_first_failing_key_is_reported_and_others_are_not_needed() -> None:
    ops = [
        put("a", 0, 1, key="good"),
        get("a", 2, 3, key="good"),
        put("a", 0, 1, key="bad"),
        get(None, 2, 3, key="bad"),
    ]
    result = rejected(ops)
    assert result.failing_key == "bad"


def test_timeout_gives_an_unknown_verdict() -> None:
    ops = []
    for i in range(3000):
        ops.append(put(f"v{i}", 2 * i, 2 * i + 1))
    result = check_history(ops, timeout_s=0.0)
    assert not result.ok and result.timed_out and not result.window
    assert result.describe().startswith("unknown")


# --- Property tests -----------------------------------------------------------------


@st.composite
def executions(draw: st.DrawFn) -> tuple[list[Operation], list[int]]:
    """A history from a real sequential execution with random overlapping intervals.

    Operation i takes effect at time 10 * i; its call and return are drawn around that
    instant, so that intervals overlap. Returns the history and the indexes of its
    completed reads of a present key.
    """
    n = draw(st.integers(1, 30))
    keys = draw(st.integers(1, 3))
    state: dict[str, str | None] = {}
    ops: list[Operation] = []
    reads: list[int] = []
    for i in range(n):
        key = f"k{draw(st.integers(0, keys - 1))}"
        kind = draw(st.sampled_from(["get", "get", "put", "put", "cas", "delete"]))
        lin = 100 + 10 * i
        call = lin - draw(st.integers(0, 40))
        ret: int | None = lin + draw(st.integers(0, 40))
        unknown = kind != "get" and draw(st.integers(0, 9)) == 0
        took_effect = not unknown or draw(st.booleans())
        if unknown:
            ret = None
        current = state.get(key)
        value = f"v{i}"
        if kind == "get":
            if current is not None:
                reads.append(len(ops))
            ops.append(get(current, call, ret, key=key, client=i))
        elif kind == "put":
            if took_effect:
                state[key] = value
            ops.append(put(value, call, ret, key=key, client=i))
        elif kind == "delete":
            if took_effect:
                state[key] = None
            ops.append(delete(call, ret, key=key, client=i))
        else:
            expected = current if draw(st.booleans()) else draw(st.sampled_from([None, "v0"]))
            success = expected == current
            if success and took_effect:
                state[key] = value
            ops.append(cas(expected, value, call, ret, ok=success, key=key, client=i))
    return ops, reads


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executions())
def test_histories_of_real_executions_are_accepted(case: tuple[list[Operation], list[int]]) -> None:
    ops, _ = case
    result = check_history(ops)
    assert result.ok, result.describe()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executions(), st.data())
def test_a_read_of_a_value_never_written_is_always_rejected(
    case: tuple[list[Operation], list[int]], data: st.DataObject
) -> None:
    ops, reads = case
    assume(reads)
    i = data.draw(st.sampled_from(reads))
    mutated = msgspec.structs.replace(ops[i], output="never-written")
    ops[i] = mutated
    result = rejected(ops)
    assert result.failing_key == mutated.key
    # Before that read returned, the history was explainable.
    assert result.culprit is not None and result.culprit.return_ == mutated.return_


# --- Against a brute-force reference ------------------------------------------------


def brute_force_linearizable(ops: list[Operation]) -> bool:
    """Try every order of the operations, straight from the definition."""
    items = [
        op
        for op in ops
        if not (op.unknown and op.op == "get")
        and not (not op.unknown and op.ok is False and op.op != "cas")
    ]
    n = len(items)
    inf = float("inf")
    rets = [inf if op.return_ is None or op.unknown else float(op.return_) for op in items]
    required = sum(1 << i for i, op in enumerate(items) if not op.unknown)

    def step(op: Operation, state: str | None) -> tuple[bool, str | None]:
        if op.op == "get":
            return state == op.output, state
        if op.op == "put":
            return True, op.value
        if op.op == "delete":
            return True, None
        if op.unknown or op.ok:
            return state == op.expected, op.value
        return state != op.expected, state

    @functools.cache
    def search(done: int, state: str | None) -> bool:
        if done & required == required:
            return True
        for i, op in enumerate(items):
            if done >> i & 1:
                continue
            # Everything that returned before this call must already be placed.
            if any(not done >> j & 1 and j != i and rets[j] < op.call for j in range(n)):
                continue
            legal, after = step(op, state)
            if legal and search(done | 1 << i, after):
                return True
        return False

    # An unknown op that never takes effect can be placed last, where it cannot matter.
    return search(0, None)


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    ops = []
    for i in range(draw(st.integers(1, 6))):
        call = draw(st.integers(0, 20))
        ret = None if draw(st.integers(0, 4)) == 0 else call + draw(st.integers(0, 10))
        kind = draw(st.sampled_from(["get", "put", "cas", "delete"]))
        value = draw(st.sampled_from(["a", "b"]))
        if kind == "get":
            ops.append(get(draw(st.sampled_from([None, "a", "b"])), call, ret, client=i))
        elif kind == "put":
            ops.append(put(value, call, ret, client=i, ok=draw(st.booleans()) or ret is None))
        elif kind == "delete":
            ops.append(delete(call, ret, client=i))
        else:
            exp = draw(st.sampled_from([None, "a", "b"]))
            ops.append(cas(exp, value, call, ret, ok=draw(st.booleans()), client=i))
    return ops


@settings(max_examples=400, deadline=None)
@given(small_histories())
def test_verdict_agrees_with_brute_force(ops: list[Operation]) -> None:
    expected = brute_force_linearizable(ops)
    result = check_history(ops)
    assert result.ok == expected, result.describe()
    if not expected and result.window_from_start and not any(result.window_maybe):
        assert not brute_force_linearizable(result.window)  # the window alone fails


# --- The history format --------------------------------------------------------------


LINE = {
    "client": 3,
    "op": "cas",
    "key": "k",
    "value": "b",
    "expected": "a",
    "call": 1200,
    "return": 1850,
    "output": None,
    "ok": True,
}


def test_parse_line_and_op_to_json_round_trip() -> None:
    op = parse_line(json.dumps(LINE))
    assert op.return_ == 1850 and op.expected == "a" and not op.unknown
    assert op_to_json(op) == LINE
    assert parse_line(json.dumps(LINE).encode()) == op


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    ops = [put("a", 0, 1), get("a", 2, None), cas(None, "b", 3, 4, ok=False), delete(5, 6)]
    path = tmp_path / "h.jsonl"
    dump_history(ops, path)
    assert load_history(path) == ops
    first = json.loads(path.read_text().splitlines()[0])
    assert "return" in first and "return_" not in first


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps({**LINE, "op": "append"}), "op"),
        (json.dumps({k: v for k, v in LINE.items() if k != "call"}), "call"),
        (json.dumps({**LINE, "call": "12"}), "int"),
        (json.dumps({**LINE, "ok": "yes"}), "bool"),
        (json.dumps({**LINE, "return": 10}), "before call"),
        (json.dumps({**LINE, "value": None}), "needs a string value"),
        (json.dumps({**LINE, "op": "get", "value": "x", "expected": None}), "takes no value"),
        (json.dumps({**LINE, "op": "put", "expected": "x"}), "takes no expected"),
        (json.dumps({**LINE, "extra": 1}), "extra"),
        ("[1, 2]", "object"),
    ],
)
def test_load_history_rejects_malformed_lines_with_line_number(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = tmp_path / "h.jsonl"
    good = json.dumps(LINE)
    path.write_text(f"{good}\n\n{good}\n{line}\n{good}\n")
    with pytest.raises(HistoryError) as err:
        load_history(path)
    assert err.value.line == 4
    assert reason.lower() in err.value.reason.lower()
    assert "line 4" in str(err.value)


def test_run_check_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    dump_history([put("a", 0, 1), get("a", 2, 3)], good)
    out = io.StringIO()
    assert run_check(str(good), out) == 0
    assert "linearizable" in out.getvalue()

    bad = tmp_path / "bad.jsonl"
    dump_history([put("a", 0, 1, key="users/7"), get(None, 2, 3, key="users/7")], bad)
    out = io.StringIO()
    assert run_check(str(bad), out) == 1
    assert "NOT linearizable" in out.getvalue() and "users/7" in out.getvalue()

    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text(json.dumps(LINE) + "\n{oops\n")
    out = io.StringIO()
    assert run_check(str(malformed), out) == 2
    assert "line 2" in out.getvalue() and "Traceback" not in out.getvalue()

    out = io.StringIO()
    assert run_check(str(tmp_path / "missing.jsonl"), out) == 2
    assert "cannot read" in out.getvalue()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({**LINE, "op": "get", "value": None, "expected": None}, '"output"'),
        ({**LINE, "expected": None}, '"expected"'),
    ],
)
def test_a_line_lacking_a_field_its_operation_needs_is_refused(
    tmp_path: Path, record: dict[str, object], message: str
) -> None:
    field = "output" if record["op"] == "get" else "expected"
    del record[field]
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(LINE) + "\n" + json.dumps(record) + "\n")
    out = io.StringIO()
    assert run_check(str(path), out) == 2
    assert "line 2" in out.getvalue() and message in out.getvalue()
    assert "missing" in out.getvalue()
    # With the field present and null it is a real value: absent key, read or expected.
    path.write_text(json.dumps(LINE) + "\n" + json.dumps({**record, field: None}) + "\n")
    assert run_check(str(path), io.StringIO()) in (0, 1)


def test_a_get_with_an_unknown_outcome_needs_no_output() -> None:
    record = {**LINE, "op": "get", "value": None, "expected": None, "return": None, "ok": None}
    del record["output"]
    assert parse_line(json.dumps(record)).unknown


def test_an_empty_history_is_refused_not_called_linearizable(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    out = io.StringIO()
    assert run_check(str(path), out) == 2
    assert "no operations" in out.getvalue()
    assert "linearizable" not in out.getvalue()
