"""Property-based fuzzing of every reader of untrusted bytes (hypothesis).

Each target gets random and mutated inputs; the only acceptable outcomes are a clean
rejection (the reader's own error type) or a correct value. Any other exception, a
hang (hypothesis' deadline is off, the suite's timeout is the bound) or unbounded
allocation (the inputs are small, and oversized length fields must be refused before
allocating) is a failure. Budgets are CI-sized; ``PYXOS_FUZZ_EXAMPLES`` raises them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyxos.core.ballot import Ballot
from pyxos.core.messages import Accept, Entry, Message, Prepare, Promise
from pyxos.net.codec import (
    FrameDecoder,
    Hello,
    ProtocolViolation,
    decode_message,
    encode_hello,
    encode_message,
)
from pyxos.server.config import Config, ConfigError
from pyxos.storage.snapshot import SnapshotCorrupt, read_snapshot, write_snapshot
from pyxos.storage.wal import WAL, WALCorruption
from test_server_harness import cluster_configs, start_nodes, stop_nodes, wait_leader

EXAMPLES = int(os.environ.get("PYXOS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- mutations -------------------------------------------------------------------------

Mutation = tuple[str, int, int]
"""(kind, position, byte): flip, set, insert or delete one byte, or truncate there."""

MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
        st.integers(min_value=0, max_value=10_000),
        st.integers(min_value=0, max_value=255),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    """Apply byte-level mutations (positions wrap around the data's length)."""
    out = bytearray(data)
    for kind, pos, byte in mutations:
        if not out:
            break
        i = pos % len(out)
        if kind == "flip":
            out[i] ^= 1 << (byte % 8)
        elif kind == "set":
            out[i] = byte
        elif kind == "insert":
            out.insert(i, byte)
        elif kind == "delete":
            del out[i]
        else:
            del out[i:]
    return bytes(out)


# -- frames and messages ---------------------------------------------------------------

B = Ballot(3, 1)
VALID: list[Message] = [
    Prepare(src=1, ballot=B, slot=0),
    Promise(src=2, ballot=B, accepted=(Entry(0, B, b"x"),)),
    Accept(src=1, ballot=B, slot=4, values=(b"v1", b""), chosen=2),
]

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(value=msgpack_values)
def test_fuzz_any_msgpack_value_is_a_message_or_a_violation(value: Any) -> None:
    body = msgspec.msgpack.encode(value)
    try:
        msg = decode_message(body)
    except ProtocolViolation:
        return
    assert msgspec.msgpack.decode(encode_message(msg)[4:]) is not None  # re-encodable


@FUZZ
@given(index=st.integers(0, len(VALID) - 1), mutations=MUTATIONS)
def test_fuzz_mutated_messages_decode_cleanly_or_are_refused(
    index: int, mutations: list[Mutation]
) -> None:
    body = encode_message(VALID[index])[4:]
    with contextlib.suppress(ProtocolViolation):
        decode_message(mutate(body, mutations))


@FUZZ
@given(mutations=MUTATIONS, split=st.integers(0, 200))
def test_fuzz_mutated_handshake_streams(mutations: list[Mutation], split: int) -> None:
    hello = encode_hello(Hello(version=1, cluster="c", node=2, role="peer"))
    stream = mutate(hello + b"".join(encode_message(m) for m in VALID), mutations)
    decoder = FrameDecoder(max_frame_bytes=4096, expect_hello=True)
    try:
        decoder.feed(stream[:split])
        decoder.feed(stream[split:])
    except ProtocolViolation:
        return
    assert decoder.buffered <= 4096 + 4  # never more than one frame held


# -- the write-ahead log -----------------------------------------------------------------

RECORDS = [(1 + i % 3, bytes([i]) * (i % 40)) for i in range(30)]


@FUZZ
@given(mutations=MUTATIONS)
def test_fuzz_damaged_wal_is_a_prefix_or_corruption(mutations: list[Mutation]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wal, _ = WAL.open(tmp)
        wal.append(RECORDS)
        wal.sync()
        wal.close()
        (segment,) = [p for p in Path(tmp).iterdir() if p.suffix == ".log"]
        segment.write_bytes(mutate(segment.read_bytes(), mutations))
        try:
            wal, _ = WAL.open(tmp)
        except WALCorruption:
            return
        try:
            got = [(r.rtype, bytes(r.payload)) for r in wal.replay()]
        finally:
            wal.close()
        # Whatever survives is exactly the records written, in order, from the first.
        assert got == RECORDS[: len(got)]


# -- snapshots ---------------------------------------------------------------------------


@FUZZ
@given(mutations=MUTATIONS, meta=st.binary(max_size=30), data=st.binary(max_size=300))
def test_fuzz_damaged_snapshot_is_refused_or_unchanged(
    mutations: list[Mutation], meta: bytes, data: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_snapshot(tmp, 7, meta, data)
        original = path.read_bytes()
        damaged = mutate(original, mutations)
        path.write_bytes(damaged)
        try:
            snap = read_snapshot(path)
        except SnapshotCorrupt:
            return
        assert damaged == original
        assert (snap.slot, snap.meta, snap.data) == (7, meta, data)


# -- configuration -----------------------------------------------------------------------

GOOD_TOML = """\
cluster_id = "c"
node_id = 1
data_dir = "/tmp/pyxos-fuzz"
client_port = 7101
http_port = 7201
election_timeout = [0.3, 0.6]
heartbeat_interval = 0.05
peers = { "1" = "127.0.0.1:7001", "2" = "127.0.0.1:7002", "3" = "127.0.0.1:7003" }
"""

toml_values = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.booleans(),
    st.lists(st.integers(-5, 100_000), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=25), max_size=3),
)


@FUZZ
@given(text=st.text(max_size=300) | st.builds(mutate, st.just(GOOD_TOML.encode()), MUTATIONS))
def test_fuzz_config_text_is_a_config_or_a_config_error(text: str | bytes) -> None:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    with tempfile.NamedTemporaryFile("wb", suffix=".toml") as f:
        f.write(raw)
        f.flush()
        with contextlib.suppress(ConfigError):
            Config.load(f.name)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(tomllib.loads(GOOD_TOML))), toml_values))
def test_fuzz_config_values_are_validated(changes: dict[str, Any]) -> None:
    raw = tomllib.loads(GOOD_TOML) | changes
    try:
        config = Config.from_mapping(raw)
    except ConfigError:
        return
    assert config.node_id >= 1 and config.node_id in config.peers


# -- the HTTP API (one in-process cluster, many requests) -------------------------------

METHODS = st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"])
PATHS = st.one_of(
    st.sampled_from(["/v1/kv", "/v1/kv/", "/v1/status", "/healthz", "/metrics", "/v1/apps"]),
    st.builds(lambda k: f"/v1/kv/{k}", st.text(min_size=1, max_size=30)),
    st.builds(lambda k: f"/v1/kv/{k}/cas", st.text(min_size=1, max_size=10)),
    st.builds(lambda q: f"/v1/kv?{q}", st.text(max_size=40)),
    # Member requests: the body is fuzzed on /v1/members (a valid one adds a learner);
    # an id that never parses keeps the rest from changing the membership.
    st.sampled_from(["/v1/members", "/v1/members?node=x"]),
    st.builds(
        lambda k, tail: f"/v1/members/{k}x{tail}",
        st.text(max_size=10),
        st.sampled_from(["", "/promote", "/replace"]),
    ),
)
BODIES = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v: msgspec.json.encode(v), msgpack_values),
)


def test_fuzz_http_api_answers_every_request_and_keeps_serving(tmp_path: Path) -> None:
    requests: list[tuple[str, str, bytes]] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None)
    @given(method=METHODS, path=PATHS, body=BODIES)
    def collect(method: str, path: str, body: bytes) -> None:
        requests.append((method, path, body))

    collect()

    async def main() -> None:
        configs = cluster_configs(tmp_path, http_port=0)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            base = f"http://127.0.0.1:{leader.http_port}"
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                for method, path, body in requests:
                    url = base + "".join(c if c.isprintable() else "%3F" for c in path)
                    try:
                        async with http.request(method, url, data=body) as r:
                            await r.read()
                            assert r.status < 500 or r.status in (503, 504), (
                                method,
                                path,
                                r.status,
                            )
                    except aiohttp.InvalidURL:
                        continue
                    except aiohttp.ClientResponseError:
                        continue  # the client refused a malformed answer to a malformed URL
                async with http.put(f"{base}/v1/kv/after-fuzz", data=b"ok") as r:
                    assert r.status == 200
                async with http.get(f"{base}/v1/kv/after-fuzz") as r:
                    assert (await r.json())["value"] == "ok"
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
    assert len(requests) >= min(EXAMPLES, 50)


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    # Found by the fuzzer above: tomllib raised UnicodeDecodeError, a traceback.
    path = tmp_path / "node.toml"
    path.write_bytes(b"\xe3" + GOOD_TOML.encode())
    with pytest.raises(ConfigError, match="not UTF-8"):
        Config.load(path)
