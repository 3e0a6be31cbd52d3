"""The KV state machine: op semantics, exactly-once sessions, slots, snapshots, validation."""

from __future__ import annotations

from collections import deque

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxos.statemachine import (
    MAX_KEY_BYTES,
    MAX_LIST_ENTRIES,
    MAX_VALUE_BYTES,
    Applied,
    Command,
    KVStore,
    ReplicatedApp,
    ReplicatedAppWithoutDedup,
    Result,
    StateMachine,
    decode_batch,
    decode_result,
    encode_batch,
    encode_result,
    validate_command,
)

_seqs: dict[int, int] = {}


def kv(*, max_sessions: int = 100_000) -> ReplicatedApp[KVStore]:
    """The KV store as the service runs it: inside the replication layer, which holds
    the slots, batches and client sessions."""
    return ReplicatedApp(KVStore(), max_sessions=max_sessions)


def cmd(
    op: str,
    key: str,
    value: str | None = None,
    expected: str | None = None,
    *,
    client: int = 1,
    seq: int | None = None,
) -> Command:
    """A command; without ``seq``, the next seq of ``client`` (per test, see fixture)."""
    if seq is None:
        seq = _seqs.get(client, 0) + 1
    _seqs[client] = max(seq, _seqs.get(client, 0))
    return Command(client, seq, op, key, value, expected)


@pytest.fixture(autouse=True)
def _fresh_seqs() -> None:
    _seqs.clear()


def run(store: ReplicatedApp[KVStore], *commands: Command) -> list[Result]:
    """Apply ``commands`` as one batch at the next slot; return the decoded results."""
    applied = store.apply(store.applied_slot, encode_batch(commands))
    assert [(a.client, a.seq) for a in applied] == [(c.client, c.seq) for c in commands]
    return [decode_result(a.result) for a in applied]


def run1(store: ReplicatedApp[KVStore], command: Command) -> Result:
    """Apply one command alone in a slot."""
    [result] = run(store, command)
    return result


# --- the ops -------------------------------------------------------------------------


def test_get_of_a_missing_key_is_ok_with_no_value() -> None:
    assert run1(kv(), cmd("get", "k")) == Result(ok=True, value=None)


def test_put_then_get_returns_the_value_and_put_overwrites() -> None:
    s = kv()
    assert run1(s, cmd("put", "k", "v1")) == Result(ok=True)
    assert run1(s, cmd("get", "k")) == Result(ok=True, value="v1")
    assert run1(s, cmd("put", "k", "v2")) == Result(ok=True)
    assert run1(s, cmd("get", "k")) == Result(ok=True, value="v2")


def test_delete_returns_the_deleted_value_or_none() -> None:
    s = kv()
    run1(s, cmd("put", "k", "v"))
    assert run1(s, cmd("delete", "k")) == Result(ok=True, value="v")
    assert run1(s, cmd("get", "k")) == Result(ok=True, value=None)
    assert run1(s, cmd("delete", "k")) == Result(ok=True, value=None)


def test_cas_sets_the_value_when_the_current_value_is_the_expected_one() -> None:
    s = kv()
    run1(s, cmd("put", "k", "old"))
    assert run1(s, cmd("cas", "k", "new", "old")) == Result(ok=True)
    assert s.app.get_local("k") == "new"


def test_cas_fails_with_the_current_value_when_it_is_not_the_expected_one() -> None:
    s = kv()
    run1(s, cmd("put", "k", "current"))
    assert run1(s, cmd("cas", "k", "new", "other")) == Result(ok=False, value="current")
    assert s.app.get_local("k") == "current"


def test_cas_with_expected_none_means_the_key_must_be_absent() -> None:
    s = kv()
    assert run1(s, cmd("cas", "k", "first", None)) == Result(ok=True)
    assert s.app.get_local("k") == "first"
    assert run1(s, cmd("cas", "k", "second", None)) == Result(ok=False, value="first")
    assert s.app.get_local("k") == "first"


def test_cas_on_an_absent_key_expecting_a_value_fails_with_no_value() -> None:
    s = kv()
    assert run1(s, cmd("cas", "k", "new", "old")) == Result(ok=False, value=None)
    assert s.app.get_local("k") is None


def test_list_returns_the_keys_with_the_prefix_sorted_by_key() -> None:
    s = kv()
    run(s, *(cmd("put", k, k.upper()) for k in ["b/2", "a", "b/1", "ba", "b/10", "c"]))
    assert run1(s, cmd("list", "b/")) == Result(
        ok=True, values=[("b/1", "B/1"), ("b/10", "B/10"), ("b/2", "B/2")]
    )
    assert run1(s, cmd("list", "zz")) == Result(ok=True, values=[])
    everything = run1(s, cmd("list", "")).values
    assert everything is not None
    assert [k for k, _ in everything] == ["a", "b/1", "b/10", "b/2", "ba", "c"]


def test_list_returns_at_most_max_list_entries_the_first_in_key_order() -> None:
    s = kv()
    n = MAX_LIST_ENTRIES + 5
    run(s, *(cmd("put", f"k{i:06d}", "v", client=i) for i in reversed(range(n))))
    result = run1(s, cmd("list", "k"))
    values = result.values
    assert values is not None
    assert len(values) == MAX_LIST_ENTRIES
    assert values == [(f"k{i:06d}", "v") for i in range(MAX_LIST_ENTRIES)]
    assert result.more is True  # said, not silently cut off
    assert s.app.list_page("k") == (values, True)
    assert len(s.app.list_local("k")) == n


def test_a_batch_gives_one_result_per_command_in_order() -> None:
    s = kv()
    results = run(
        s,
        cmd("put", "k", "1", client=1),
        cmd("get", "k", client=2),
        cmd("cas", "k", "2", "1", client=3),
        cmd("delete", "k", client=4),
    )
    assert results == [
        Result(ok=True),
        Result(ok=True, value="1"),
        Result(ok=True),
        Result(ok=True, value="2"),
    ]


def test_commands_the_store_cannot_carry_out_get_an_error_not_a_crash() -> None:
    # validate_command would reject these; a replica still must not crash on them.
    s = kv()
    bad = [
        Command(1, 1, "frobnicate", "k"),
        Command(2, 1, "put", "k"),
        Command(3, 1, "cas", "k", None, "x"),
    ]
    results = run(s, *bad)
    assert all(not r.ok and r.error for r in results)
    assert results[0].error == "unknown op 'frobnicate'"
    assert len(s.app) == 0
    # ... and the error is the recorded result of a retry
    assert run1(s, bad[0]) == results[0]


def test_local_reads_see_applied_state_and_touch_no_session() -> None:
    s = kv()
    run1(s, cmd("put", "a/x", "1"))
    before = s.snapshot()
    assert s.app.get_local("a/x") == "1"
    assert s.app.get_local("nope") is None
    assert s.app.list_local("a/") == [("a/x", "1")]
    assert s.snapshot() == before


# --- exactly once ----------------------------------------------------------------------


def test_a_retry_returns_the_stored_result_and_is_not_applied_twice() -> None:
    s = kv()
    first = cmd("put", "k", "from-1", client=1)
    assert run1(s, first) == Result(ok=True)
    run1(s, cmd("put", "k", "from-2", client=2))
    applied = s.apply(s.applied_slot, encode_batch([first]))  # the retry, in a later slot
    assert applied == [Applied(1, first.seq, encode_result(Result(ok=True)))]
    assert s.app.get_local("k") == "from-2"


def test_a_retried_read_returns_the_value_it_read_the_first_time() -> None:
    s = kv()
    run1(s, cmd("put", "k", "old", client=2))
    read = cmd("get", "k", client=1)
    assert run1(s, read) == Result(ok=True, value="old")
    run1(s, cmd("put", "k", "new", client=2))
    assert run1(s, read) == Result(ok=True, value="old")


def test_a_retry_in_the_same_batch_is_answered_from_the_session() -> None:
    s = kv()
    c = cmd("cas", "k", "v", None)
    assert run(s, c, c) == [Result(ok=True), Result(ok=True)]


def test_a_stale_seq_is_refused_without_applying() -> None:
    s = kv()
    run1(s, cmd("put", "k", "5", seq=5))
    assert run1(s, cmd("put", "k", "3", seq=3)) == Result(
        ok=False, error="stale request: seq 3 already superseded"
    )
    assert s.app.get_local("k") == "5"
    assert s.session(1) == (5, encode_result(Result(ok=True)))


def test_a_higher_seq_applies_even_after_a_gap_in_seqs() -> None:
    s = kv()
    run1(s, cmd("put", "k", "1", seq=1))
    assert run1(s, cmd("put", "k", "9", seq=9)) == Result(ok=True)
    assert s.app.get_local("k") == "9"


def test_sessions_evict_the_least_recently_used_client() -> None:
    s = kv(max_sessions=2)
    run1(s, cmd("put", "k", "1", client=1))
    run1(s, cmd("put", "k", "2", client=2))
    run1(s, cmd("get", "k", client=1, seq=1))  # a retry still counts as a use
    run1(s, cmd("put", "k", "3", client=3))
    assert s.session(2) is None
    assert s.session(1) is not None
    assert s.session(3) is not None
    # The documented cost: a retry of an evicted client is applied again.
    run1(s, cmd("put", "k", "2", client=2, seq=1))
    assert s.app.get_local("k") == "2"
    assert s.session(1) is None


def test_max_sessions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_sessions"):
        kv(max_sessions=0)


def test_the_broken_variant_really_applies_a_retry_twice() -> None:
    s = ReplicatedAppWithoutDedup(KVStore())
    assert isinstance(s, ReplicatedApp)
    first = cmd("put", "k", "from-1", client=1)
    run1(s, first)
    run1(s, cmd("put", "k", "from-2", client=2))
    run1(s, first)
    assert s.app.get_local("k") == "from-1"
    run1(s, cmd("put", "k", "stale", seq=0))
    assert s.app.get_local("k") == "stale"


# --- slots -----------------------------------------------------------------------------


def test_kv_store_is_a_state_machine() -> None:
    s: StateMachine = kv()
    assert isinstance(s, StateMachine)
    assert s.applied_slot == 0


def test_an_empty_value_is_a_no_op_that_consumes_its_slot() -> None:
    s = kv()
    before = s.snapshot()
    assert s.apply(0, b"") == []
    assert s.applied_slot == 1
    assert s.app.get_local("k") is None
    run1(s, cmd("put", "k", "v"))
    assert s.applied_slot == 2
    assert s.snapshot() != before


def test_an_empty_batch_applies_nothing() -> None:
    s = kv()
    assert s.apply(0, encode_batch([])) == []
    assert s.applied_slot == 1


@pytest.mark.parametrize("slot", [1, 5])
def test_applying_past_a_gap_raises(slot: int) -> None:
    s = kv()
    with pytest.raises(ValueError, match="a gap: the next slot to apply is 0"):
        s.apply(slot, encode_batch([cmd("put", "k", "v")]))
    assert s.applied_slot == 0
    assert s.app.get_local("k") is None


def test_applying_a_slot_again_raises_and_changes_nothing() -> None:
    s = kv()
    value = encode_batch([cmd("put", "k", "v")])
    s.apply(0, value)
    before = s.snapshot()
    with pytest.raises(ValueError, match="a repeat: the next slot to apply is 1"):
        s.apply(0, value)
    assert s.snapshot() == before


@pytest.mark.parametrize(
    "value",
    [
        b"\xc1",  # never valid msgpack
        b"\x92\x01",  # truncated
        msgspec.msgpack.encode({"op": "put"}),  # not an array
        msgspec.msgpack.encode([[1, 1, "put"]]),  # a command without a key
        msgspec.msgpack.encode([[1, "one", "put", "k"]]),  # seq not an int
        encode_batch([Command(1, 1, "get", "k")]) + b"\x00",  # trailing bytes
    ],
)
def test_a_malformed_batch_is_counted_and_consumes_its_slot(value: bytes) -> None:
    s = kv()
    assert s.apply(0, value) == []
    assert s.malformed == 1
    assert s.applied_slot == 1
    assert run1(s, cmd("put", "k", "v")) == Result(ok=True)


# --- codecs and validation ------------------------------------------------------------


def test_batches_and_results_round_trip() -> None:
    batch = [Command(1, 2, "put", "k", "v"), Command(3, 4, "cas", "k", "w", None)]
    assert decode_batch(encode_batch(batch)) == batch
    assert decode_batch(encode_batch(tuple(batch))) == batch
    assert decode_batch(encode_batch(deque(batch))) == batch
    result = Result(ok=True, values=[("a", "1"), ("b", "2")])
    assert decode_result(encode_result(result)) == result
    with pytest.raises(msgspec.DecodeError):
        decode_batch(b"\xc1")
    with pytest.raises(msgspec.DecodeError):
        decode_result(b"\x90")


def test_well_formed_commands_validate() -> None:
    for c in [
        Command(1, 1, "get", "k"),
        Command(1, 1, "put", "k", ""),
        Command(1, 1, "delete", "k"),
        Command(1, 1, "cas", "k", "new", None),
        Command(1, 1, "cas", "k", "new", "old"),
        Command(1, 1, "list", ""),
        Command(1, 1, "put", "k" * MAX_KEY_BYTES, "v" * MAX_VALUE_BYTES),
        Command(1, 1, "put", "é" * (MAX_KEY_BYTES // 2), "€" * (MAX_VALUE_BYTES // 3)),
    ]:
        validate_command(c)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (Command(1, 1, "incr", "k"), "unknown op 'incr': expected one of cas, delete, get"),
        (Command(1, 1, "get", ""), "get: the key is empty"),
        (Command(1, 1, "put", "", "v"), "put: the key is empty"),
        (Command(1, 1, "get", "k" * (MAX_KEY_BYTES + 1)), "key is 1025 bytes, more than 1024"),
        (Command(1, 1, "get", "é" * 513), "key is 1026 bytes, more than 1024"),
        (Command(1, 1, "list", "k" * 2000), "key is 2000 bytes"),
        (Command(1, 1, "get", "\ud800"), "key is not valid UTF-8"),
        (Command(1, 1, "put", "k"), "put: a value is required"),
        (Command(1, 1, "cas", "k", None, "old"), "cas: a value is required"),
        (
            Command(1, 1, "put", "k", "v" * (MAX_VALUE_BYTES + 1)),
            "value is 1048577 bytes, more than 1048576",
        ),
        (Command(1, 1, "put", "k", "é" * (MAX_VALUE_BYTES // 2 + 1)), "value is 1048578 bytes"),
        (
            Command(1, 1, "cas", "k", "v", "x" * (MAX_VALUE_BYTES + 1)),
            "cas: the expected value is 1048577 bytes",
        ),
        (Command(1, 1, "get", "k", "v"), "get: takes no value"),
        (Command(1, 1, "delete", "k", "v"), "delete: takes no value"),
        (Command(1, 1, "put", "k", "v", "x"), "put: takes no expected value"),
        (Command(1, 1, "list", "k", None, "x"), "list: takes no expected value"),
    ],
)
def test_invalid_commands_are_refused_with_a_clear_message(command: Command, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate_command(command)


# --- snapshots --------------------------------------------------------------------------


def test_snapshot_restore_round_trips_exactly() -> None:
    s = kv()
    run(s, cmd("put", "a", "1", client=1), cmd("put", "b", "2", client=2))
    run1(s, cmd("delete", "a", client=3))
    s.apply(s.applied_slot, b"")
    t = kv()
    t.restore(s.snapshot())
    assert t.snapshot() == s.snapshot()
    assert t.applied_slot == s.applied_slot == 3
    assert t.app.get_local("b") == "2"
    assert t.session(2) == s.session(2)


def test_restore_replaces_the_whole_state() -> None:
    empty = kv().snapshot()
    s = kv()
    run1(s, cmd("put", "k", "v"))
    s.restore(empty)
    assert s.snapshot() == empty
    assert s.app.get_local("k") is None
    assert s.session(1) is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode(["kv", 1, 0, {}]),
        msgspec.msgpack.encode(["other", 1, 0, {}, []]),
        msgspec.msgpack.encode(["kv", 2, 0, {}, []]),
        msgspec.msgpack.encode(["kv", 1, -1, {}, []]),
    ],
)
def test_restore_refuses_what_is_not_a_snapshot_and_keeps_the_state(data: bytes) -> None:
    s = kv()
    run1(s, cmd("put", "k", "v"))
    before = s.snapshot()
    with pytest.raises(ValueError, match="snapshot"):
        s.restore(data)
    assert s.snapshot() == before


def test_restore_evicts_sessions_beyond_max_sessions_least_recent_first() -> None:
    s = kv()
    run(s, *(cmd("put", "k", "v", client=c) for c in [1, 2, 3]))
    t = kv(max_sessions=2)
    t.restore(s.snapshot())
    assert t.session(1) is None
    assert t.session(2) is not None
    assert t.session(3) is not None


# --- property tests -------------------------------------------------------------------

KEYS = ["a", "b", "ab", "ba"]
VALUES = [None, "x", "y", ""]

commands = st.builds(
    Command,
    client=st.integers(1, 4),
    seq=st.integers(1, 6),
    op=st.sampled_from(["get", "put", "delete", "cas", "list"]),
    key=st.sampled_from(KEYS),
    value=st.sampled_from(VALUES),
    expected=st.sampled_from(VALUES),
).map(
    lambda c: Command(
        c.client,
        c.seq,
        c.op,
        c.key if c.op != "list" else c.key[:1],
        (c.value if c.value is not None else "v") if c.op in ("put", "cas") else None,
        c.expected if c.op == "cas" else None,
    )
)
slot_values = st.one_of(
    st.lists(commands, max_size=5).map(encode_batch),
    st.just(b""),
    st.just(b"\xc1"),
)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(slot_values, max_size=25),
    cut=st.integers(0, 25),
    max_sessions=st.integers(1, 5),
)
def test_restoring_a_snapshot_and_continuing_equals_never_snapshotting(
    values: list[bytes], cut: int, max_sessions: int
) -> None:
    cut = min(cut, len(values))
    straight = kv(max_sessions=max_sessions)
    expected = [straight.apply(slot, v) for slot, v in enumerate(values)]

    first = kv(max_sessions=max_sessions)
    for slot, v in enumerate(values[:cut]):
        first.apply(slot, v)
    resumed = kv(max_sessions=max_sessions)
    resumed.restore(first.snapshot())
    assert resumed.applied_slot == cut
    after = [resumed.apply(slot, v) for slot, v in enumerate(values) if slot >= cut]

    assert after == expected[cut:]
    assert resumed.snapshot() == straight.snapshot()
    assert resumed.app.list_local("") == straight.app.list_local("")


def _model(commands: list[Command]) -> list[Result]:
    """The KV semantics written as plainly as possible, with unbounded sessions."""
    kv: dict[str, str] = {}
    sessions: dict[int, tuple[int, Result]] = {}
    results = []
    for c in commands:
        last = sessions.get(c.client)
        if last is not None and c.seq == last[0]:
            results.append(last[1])
            continue
        if last is not None and c.seq < last[0]:
            results.append(Result(ok=False, error=f"stale request: seq {c.seq} already superseded"))
            continue
        current = kv.get(c.key)
        if c.op == "get":
            r = Result(ok=True, value=current)
        elif c.op == "put":
            assert c.value is not None
            kv[c.key] = c.value
            r = Result(ok=True)
        elif c.op == "delete":
            kv.pop(c.key, None)
            r = Result(ok=True, value=current)
        elif c.op == "cas":
            assert c.value is not None
            if current == c.expected:
                kv[c.key] = c.value
                r = Result(ok=True)
            else:
                r = Result(ok=False, value=current)
        else:
            r = Result(ok=True, values=sorted((k, v) for k, v in kv.items() if k.startswith(c.key)))
        sessions[c.client] = (c.seq, r)
        results.append(r)
    return results


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(commands, max_size=5), max_size=20))
def test_results_match_a_plain_model_of_the_semantics(batches: list[list[Command]]) -> None:
    s = kv()
    got = [r for batch in batches for r in run(s, *batch)]
    assert got == _model([c for batch in batches for c in batch])


# --- the state digest ----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(slot_values, max_size=25),
    cut=st.integers(0, 25),
    max_sessions=st.integers(1, 5),
)
def test_the_tracked_digest_equals_the_digest_computed_from_scratch(
    values: list[bytes], cut: int, max_sessions: int
) -> None:
    tracked = kv(max_sessions=max_sessions)
    tracked.track_digest()
    plain = kv(max_sessions=max_sessions)
    for slot, v in enumerate(values):
        tracked.apply(slot, v)
        plain.apply(slot, v)
        assert tracked.state_digest() == plain.state_digest()
    # A restored snapshot has the digest of the state it came from.
    cut = min(cut, len(values))
    first = kv(max_sessions=max_sessions)
    for slot, v in enumerate(values[:cut]):
        first.apply(slot, v)
    resumed = kv(max_sessions=max_sessions)
    resumed.track_digest()
    resumed.restore(first.snapshot())
    assert resumed.state_digest() == first.state_digest()
    for slot, v in enumerate(values):
        if slot >= cut:
            resumed.apply(slot, v)
    assert resumed.state_digest() == tracked.state_digest()


def test_the_digest_covers_the_data_and_the_session_table() -> None:
    a, b = kv(), kv()
    for s in (a, b):
        s.track_digest()
    assert a.state_digest() == b.state_digest()
    run1(a, cmd("put", "k", "v", client=1, seq=1))
    run1(b, cmd("put", "k", "w", client=1, seq=1))
    assert a.state_digest() != b.state_digest()  # data
    c, d = kv(), kv()
    run1(c, cmd("put", "k", "v", client=1, seq=1))
    run1(d, cmd("put", "k", "v", client=2, seq=1))
    assert c.snapshot() != d.snapshot()
    assert c.state_digest() != d.state_digest()  # same data, other sessions
    # Same sessions and data reached by different paths: same digest.
    e, f = kv(), kv()
    e.track_digest()
    run1(e, cmd("put", "k", "x", client=1, seq=1))
    run1(e, cmd("put", "k", "v", client=1, seq=2))
    run1(f, cmd("put", "k", "v", client=1, seq=2))
    assert run1(e, cmd("get", "k", client=3, seq=1)) == run1(f, cmd("get", "k", client=3, seq=1))
    assert e.state_digest() == f.state_digest()


@pytest.mark.parametrize(
    ("key", "value", "refused"),
    [
        ("k", "v", False),
        ("ключ", "значение", False),  # short, not ASCII: the size of the command bounds it
        ("é" * (MAX_KEY_BYTES // 2), "v", False),  # 1024 bytes of key, in a longer command
        ("é" * (MAX_KEY_BYTES // 2 + 1), "v", True),  # 1026 bytes of key
        ("k" * (MAX_KEY_BYTES + 1), "v", True),
        ("k", "€" * (MAX_VALUE_BYTES // 3 + 1), True),
    ],
)
def test_the_store_validates_puts_as_validate_command_does(
    key: str, value: str, refused: bool
) -> None:
    """``KVStore.validate``'s inline checks of a put (by the command's size, or by
    ASCII lengths) refuse exactly what ``validate_command`` refuses."""
    command = Command(1, 1, "put", key, value)
    error = KVStore().validate(msgspec.msgpack.encode(command))
    assert (error is not None) == refused
    if refused:
        with pytest.raises(ValueError):
            validate_command(command)
