"""The wire codec: frames, the handshake, strict decoding, limits (pyxos.net.codec)."""

import itertools
import struct
import tracemalloc
import typing

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxos.core.ballot import Ballot
from pyxos.core.messages import Accepted, ClientReplies, ClientReply, Message, Snapshot
from pyxos.net.codec import (
    CLIENT_PROTOCOL_VERSION,
    MAX_FRAME_BYTES,
    MAX_HELLO_BYTES,
    PROTOCOL_VERSION,
    FrameDecoder,
    HandshakeError,
    Hello,
    ProtocolViolation,
    check_hello,
    decode_message,
    encode_frames,
    encode_hello,
    encode_message,
    encode_replies,
)

B = Ballot(3, 2)


class _Examples:
    """Builds a message of a given type from its field types, with distinct values.

    Generated rather than written by hand so that every member of the ``Message``
    union gets a round trip, including messages added after these tests were written.
    ``rich`` fills every field (two-item tuples, binary bytes, large ints); otherwise
    only the required fields are given and the defaults are used.
    """

    def __init__(self, rich: bool) -> None:
        self.rich = rich
        self.counter = 0

    def _int(self) -> int:
        self.counter += 1
        return self.counter * (2**40 + 7) if self.rich else self.counter

    def value(self, t: msgspec.inspect.Type) -> object:
        match t:
            case msgspec.inspect.IntType():
                return self._int()
            case msgspec.inspect.BoolType():
                return self.rich
            case msgspec.inspect.BytesType():
                return bytes([0, 255, self._int() % 256]) * 5 if self.rich else b"v"
            case msgspec.inspect.StrType():
                return f"s{self._int()}"
            case msgspec.inspect.FloatType():
                return self._int() + 0.5
            case msgspec.inspect.StructType():
                return self.build(t.cls)
            case msgspec.inspect.VarTupleType():
                count = 2 if self.rich else 1
                return tuple(self.value(t.item_type) for _ in range(count))
            case msgspec.inspect.ListType():  # decoded as a list: built as one
                count = 2 if self.rich else 1
                return [self.value(t.item_type) for _ in range(count)]
            case msgspec.inspect.UnionType():  # an optional field: rich examples fill it
                some = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
                return self.value(some[0]) if self.rich or len(some) == len(t.types) else None
        raise AssertionError(f"teach _Examples to build a {t}")

    def build(self, cls: type) -> typing.Any:
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        fields = [f for f in info.fields if self.rich or f.required]
        return cls(**{f.name: self.value(f.type) for f in fields})


MESSAGE_TYPES: tuple[type, ...] = typing.get_args(Message)
ONE_OF_EACH: list[Message] = [_Examples(rich=True).build(cls) for cls in MESSAGE_TYPES]
PLAIN_ONE_OF_EACH: list[Message] = [_Examples(rich=False).build(cls) for cls in MESSAGE_TYPES]
A_MESSAGE = Accepted(src=1, ballot=B, slot=4)
HELLO = Hello(version=PROTOCOL_VERSION, cluster="a", node=2, role="peer")


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_the_examples_cover_every_message_type() -> None:
    assert len(MESSAGE_TYPES) >= 12
    assert [type(m) for m in ONE_OF_EACH] == [type(m) for m in PLAIN_ONE_OF_EACH]
    assert {type(m) for m in ONE_OF_EACH} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", ONE_OF_EACH + PLAIN_ONE_OF_EACH, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_one_frame(msg: Message) -> None:
    data = encode_message(msg)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    decoded = FrameDecoder().feed(data)
    assert decoded == [msg]
    assert type(decoded[0]) is type(msg)


def test_encode_frames_is_the_concatenation_of_single_frames() -> None:
    assert encode_frames(ONE_OF_EACH) == b"".join(encode_message(m) for m in ONE_OF_EACH)
    assert encode_frames([]) == b""


def test_frames_split_at_every_byte_boundary() -> None:
    stream = encode_hello(HELLO) + encode_frames(ONE_OF_EACH)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder(expect_hello=True)
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == ONE_OF_EACH, cut
        assert decoder.hello == HELLO
        assert decoder.buffered == 0


def test_frames_fed_one_byte_at_a_time() -> None:
    stream = encode_frames(ONE_OF_EACH)
    decoder = FrameDecoder()
    got: list[Message] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == ONE_OF_EACH


def test_many_frames_in_one_feed_come_out_in_one_list_in_order() -> None:
    msgs = [Accepted(src=1, ballot=B, slot=i) for i in range(5000)]
    assert FrameDecoder().feed(encode_frames(msgs)) == msgs


def test_a_truncated_frame_waits_for_the_rest() -> None:
    data = encode_message(ONE_OF_EACH[-1])
    decoder = FrameDecoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [ONE_OF_EACH[-1]]
    assert decoder.buffered == 0
    assert decoder.feed(data[:2]) == []  # half a length prefix
    assert decoder.buffered == 2


def test_an_oversized_length_prefix_is_rejected_without_allocating() -> None:
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolViolation) as caught:
            decoder.feed(struct.pack(">I", 2**32 - 1) + b"\x93")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert caught.value.counter == "oversized_frames"
    assert "4294967295 bytes exceeds the limit of 16777216" in caught.value.reason
    assert decoder.buffered == 0


def test_the_limit_is_per_decoder_and_inclusive() -> None:
    msg = Snapshot(src=1, slot=1, offset=0, data=b"z" * 1000, total=1000)
    data = encode_message(msg)
    assert FrameDecoder(max_frame_bytes=len(data) - 4).feed(data) == [msg]
    with pytest.raises(ProtocolViolation, match="exceeds the limit"):
        FrameDecoder(max_frame_bytes=len(data) - 5).feed(data)
    assert MAX_FRAME_BYTES == 16 * 1024 * 1024


def test_the_handshake_frame_has_a_small_limit() -> None:
    decoder = FrameDecoder(expect_hello=True)
    with pytest.raises(ProtocolViolation, match="handshake frame") as caught:
        decoder.feed(struct.pack(">I", MAX_HELLO_BYTES + 1))
    assert caught.value.counter == "oversized_frames"


def test_encoding_a_message_over_the_limit_is_caller_misuse() -> None:
    big = Snapshot(src=1, slot=1, offset=0, data=b"z" * 100, total=100)
    with pytest.raises(ValueError, match="over the frame limit of 50"):
        encode_message(big, max_frame_bytes=50)
    with pytest.raises(ValueError):
        encode_frames([A_MESSAGE, big], max_frame_bytes=50)


def test_an_empty_frame_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="empty frame"):
        FrameDecoder().feed(b"\0\0\0\0")


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1\xc1\xc1",  # never-used msgpack byte
        msgspec.msgpack.encode(["bogus", 1, 2]),  # unknown tag
        msgspec.msgpack.encode(["accepted", "one", [1, 1], 3]),  # wrong field type
        msgspec.msgpack.encode(["accepted", 1, [1, 1]]),  # missing required field
        msgspec.msgpack.encode({"type": "accepted"}),  # a map, not an array
        msgspec.msgpack.encode(5),
        encode_message(A_MESSAGE)[4:] + b"\x00",  # trailing bytes inside the frame
        encode_message(ONE_OF_EACH[-1])[4:-3],  # body cut short by a lying length
    ],
    ids=["garbage", "unknown-tag", "wrong-type", "missing-field", "map", "int", "trailing", "cut"],
)
def test_bodies_that_are_not_exactly_one_message_are_violations(body: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolViolation) as caught:
        decoder.feed(encode_message(A_MESSAGE) + frame(body))
    assert caught.value.counter == "malformed_frames"
    with pytest.raises(ProtocolViolation):
        decode_message(body)


def test_a_failed_decoder_stays_failed() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolViolation):
        decoder.feed(frame(b"\xc1"))
    with pytest.raises(ProtocolViolation):
        decoder.feed(encode_message(A_MESSAGE))


def test_the_first_frame_must_be_a_hello() -> None:
    decoder = FrameDecoder(expect_hello=True)
    with pytest.raises(ProtocolViolation, match="first frame is not a Hello"):
        decoder.feed(encode_message(A_MESSAGE))


def test_hello_is_passed_to_on_hello_before_later_frames_are_parsed() -> None:
    seen: list[Hello] = []

    def refuse(hello: Hello) -> None:
        seen.append(hello)
        raise HandshakeError("no thanks")

    decoder = FrameDecoder(expect_hello=True, on_hello=refuse)
    with pytest.raises(HandshakeError) as caught:
        decoder.feed(encode_hello(HELLO) + frame(b"\xc1"))  # the garbage is never reached
    assert seen == [HELLO]
    assert caught.value.counter == "handshake_refused"


def test_a_hello_from_a_later_version_with_extra_fields_still_decodes() -> None:
    # The sixth field is the (optional) token; fields after it are ignored.
    body = msgspec.msgpack.encode(["pyxos", 2, "a", 3, "peer", "", "tls-please"])
    decoder = FrameDecoder(expect_hello=True)
    assert decoder.feed(frame(body)) == []
    assert decoder.hello == Hello(version=2, cluster="a", node=3, role="peer")
    with pytest.raises(HandshakeError, match="protocol version 2 != 1"):
        check_hello(decoder.hello, "a", PROTOCOL_VERSION)


def test_a_hello_without_a_token_encodes_as_before_and_one_with_a_token_carries_it() -> None:
    plain = Hello(version=1, cluster="a", node=0, role="client")
    assert encode_hello(plain)[4:] == msgspec.msgpack.encode(["pyxos", 1, "a", 0, "client"])
    with_token = Hello(version=1, cluster="a", node=0, role="client", token="s3cret")
    decoder = FrameDecoder(expect_hello=True)
    assert decoder.feed(encode_hello(with_token)) == []
    assert decoder.hello == with_token
    assert "s3cret" not in repr(with_token)


def test_hello_is_encoded_magic_first() -> None:
    assert msgspec.msgpack.decode(encode_hello(HELLO)[4:]) == ["pyxos", 1, "a", 2, "peer"]


@pytest.mark.parametrize(
    ("hello", "message"),
    [
        (Hello(magic="pyxis", version=1, cluster="a", node=2, role="peer"), "wrong magic"),
        (Hello(version=1, cluster="b", node=2, role="peer"), "cluster 'b' != 'a'"),
        (Hello(version=7, cluster="a", node=2, role="peer"), "protocol version 7 != 1"),
        (Hello(version=1, cluster="a", node=0, role="client"), "role 'client' != 'peer'"),
        (Hello(version=1, cluster="a", node=2, role="admin"), "unknown role 'admin'"),
        (Hello(version=1, cluster="a", node=0, role="peer"), "peer node id 0 is not >= 1"),
    ],
)
def test_check_hello_says_what_differs(hello: Hello, message: str) -> None:
    with pytest.raises(HandshakeError, match=message):
        check_hello(hello, "a", PROTOCOL_VERSION, expected_role="peer")


def test_check_hello_accepts_a_matching_peer_and_client() -> None:
    check_hello(HELLO, "a", PROTOCOL_VERSION, expected_role="peer")
    check_hello(Hello(version=1, cluster="a", node=0, role="client"), "a")


def test_a_client_port_accepts_every_client_protocol_up_to_its_own() -> None:
    for version in range(1, CLIENT_PROTOCOL_VERSION + 1):
        hello = Hello(version=version, cluster="a", node=0, role="client")
        check_hello(hello, "a", CLIENT_PROTOCOL_VERSION, expected_role="client", oldest_version=1)
    for version in (0, CLIENT_PROTOCOL_VERSION + 1):
        hello = Hello(version=version, cluster="a", node=0, role="client")
        with pytest.raises(HandshakeError, match=f"protocol version {version} is not in 1..2"):
            check_hello(
                hello, "a", CLIENT_PROTOCOL_VERSION, expected_role="client", oldest_version=1
            )


def test_replies_encode_as_one_frame_or_one_frame_each() -> None:
    replies = [ClientReply(1, c, 1, True, b"r", 1) for c in range(3)]
    msg = ClientReplies(1, replies)
    assert encode_replies(msg) == encode_message(msg)
    assert encode_replies(msg, batched=False) == encode_frames(replies)
    decoder = FrameDecoder()
    assert decoder.feed(encode_replies(msg)) == [msg]
    assert decoder.feed(encode_replies(msg, batched=False)) == replies


def test_replies_over_the_frame_limit_go_one_frame_each() -> None:
    big = b"x" * (MAX_FRAME_BYTES // 2)
    replies = [ClientReply(1, c, 1, True, big, 1) for c in range(3)]
    data = encode_replies(ClientReplies(1, replies))
    assert FrameDecoder().feed(data) == replies


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.lists(st.sampled_from(ONE_OF_EACH), max_size=4),
    noise=st.binary(max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_fuzz_any_bytes_give_messages_or_a_violation_never_another_error(
    prefix: list[Message], noise: bytes, cuts: list[int]
) -> None:
    stream = encode_frames(prefix) + noise
    decoder = FrameDecoder(max_frame_bytes=1024)
    got: list[Message] = []
    points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    try:
        for start, end in itertools.pairwise(points):
            got += decoder.feed(stream[start:end])
    except ProtocolViolation:
        return
    assert got[: len(prefix)] == prefix
