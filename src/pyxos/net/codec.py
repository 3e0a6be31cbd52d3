"""The pyxos wire format: length-prefixed msgpack frames, a handshake, strict decoding.

Theory of operation
-------------------
A connection carries a stream of *frames*. A frame is a 4-byte big-endian unsigned
length followed by that many bytes of msgpack body; the length counts the body only
and is never zero. The first frame of every connection is a ``Hello`` (magic, protocol
version, cluster id, sender node id, role); every later frame is exactly one
``pyxos.core.messages.Message``, decoded strictly into that tagged union, so a frame
that is not one of the known messages with the right field types is an error, not a
dict that blows up somewhere in the core.

This module is sans-IO (after h11): ``encode_*`` turn values into bytes ready to
write, and ``FrameDecoder.feed`` turns received bytes into messages. Nothing here
touches a socket, so the same code serves asyncio links, tests and fuzzing.

Errors distinguish who is at fault (h11's Local/RemoteProtocolError split):

- Caller misuse (encoding a message larger than the frame limit) raises ``ValueError``.
- Bytes from the remote side that break the format raise ``ProtocolViolation``:
  an oversized length prefix (detected from the 4 prefix bytes alone, before a single
  byte of the body is buffered, so a hostile length cannot make us allocate), an empty
  frame, or a body that does not decode into the expected type. The stream cannot be
  resynchronized after that, so the decoder stays failed and the link layer closes
  the connection and counts the violation (``ProtocolViolation.counter`` names the
  counter).
- A well-formed ``Hello`` that we will not talk to (another cluster, another protocol
  version, wrong role) raises ``HandshakeError``, a ``ProtocolViolation`` subclass.

Speed (docs/architecture.md, "Speed"): encoders and decoders are module-level and reused;
``encode_frames`` writes a whole batch into one buffer; ``feed`` parses every complete
frame of a chunk in one call, straight from the received bytes when nothing is
buffered, and copies only an incomplete tail. A frame split over many chunks costs
amortized linear time (``bytearray`` append and one front deletion per call).

Memory: a decoder holds at most one incomplete frame, so at most the frame limit plus
the header, and a longer frame is refused on its header. How much all the
connections of a port may hold together, and for how long, is the link layer's
business (``pyxos.net.limits``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

import msgspec

from pyxos.core.messages import ClientReplies, Message

__all__ = [
    "CLIENT_PROTOCOL_VERSION",
    "HEADER_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_HELLO_BYTES",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "HandshakeError",
    "Hello",
    "ProtocolViolation",
    "check_hello",
    "decode_message",
    "encode_frames",
    "encode_hello",
    "encode_message",
    "encode_replies",
]

PROTOCOL_VERSION = 1
"""The wire protocol version sent in every peer ``Hello``; peers must match it exactly."""

CLIENT_PROTOCOL_VERSION = 2
"""The newest client protocol, sent in a client's ``Hello`` (a client port accepts
every version from 1 to this one). Version 2 adds the batched frames
(``ClientRequests`` from the client, ``ClientReplies`` back): a connection that said
version 1 never receives a ``ClientReplies`` (its replies go one frame each), so the
clients of version 1 work as before. A client of version 2 needs nodes of this version
or later (an older node refuses its ``Hello``: upgrade the nodes first)."""

MAGIC = "pyxos"
"""The first field of every ``Hello``: tells a pyxos peer from a stray connection."""

HEADER_BYTES = 4
"""Size of the big-endian length prefix of every frame."""

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Default limit on a frame's body (16 MiB); configurable per ``FrameDecoder``."""

MAX_HELLO_BYTES = 4096
"""Limit on the first frame: an unauthenticated peer cannot make us buffer more."""

_HEADER = struct.Struct(">I")
_MAX_LENGTH_FIELD = 2**32 - 1


class Hello(msgspec.Struct, frozen=True, array_like=True, kw_only=True):
    """The handshake: the first frame on every connection, in both roles.

    ``node`` is the sender's node id (>= 1 for a peer, 0 for a client); ``role`` is
    ``"peer"`` or ``"client"``. Encoded as a msgpack array in field order, so the magic
    comes first; fields a later version appends are ignored by this one.

    ``token`` (optional, appended later): a client's bearer token when the node
    requires one (``pyxos.server.auth``); left out of the encoding when empty, so a
    Hello without one is byte-for-byte what it was before, and never in ``repr``.
    """

    magic: str = MAGIC
    version: int
    cluster: str
    node: int
    role: str
    token: str = ""

    def __repr__(self) -> str:
        token = ", token=<hidden>" if self.token else ""
        return (
            f"Hello(magic={self.magic!r}, version={self.version}, cluster={self.cluster!r}, "
            f"node={self.node}, role={self.role!r}{token})"
        )


class _HelloWithoutToken(msgspec.Struct, frozen=True, array_like=True):
    """A ``Hello`` as encoded without a token: the original five fields."""

    magic: str
    version: int
    cluster: str
    node: int
    role: str


class ProtocolViolation(Exception):
    """The remote side sent bytes that break the wire format; close the connection.

    ``reason`` says what was wrong, for one clear log line; ``counter`` names the
    counter the link layer increments (``malformed_frames``, ``oversized_frames`` or
    ``handshake_refused``).
    """

    counter = "malformed_frames"

    def __init__(self, reason: str, *, counter: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if counter is not None:
            self.counter = counter


class HandshakeError(ProtocolViolation):
    """A well-formed ``Hello`` we refuse: wrong magic, cluster, version or role.

    ``farewell``: an encoded frame written to the refused connection before it is
    closed (a peer port tells a removed node why, with a ``Removed`` message)."""

    counter = "handshake_refused"

    def __init__(self, reason: str, *, counter: str | None = None, farewell: bytes = b"") -> None:
        super().__init__(reason, counter=counter)
        self.farewell = farewell


_encoder = msgspec.msgpack.Encoder()
_message_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)
_hello_decoder = msgspec.msgpack.Decoder(Hello)


def _append_frame(buffer: bytearray, value: object, max_frame_bytes: int) -> None:
    start = len(buffer)
    buffer += b"\0\0\0\0"
    _encoder.encode_into(value, buffer, -1)
    length = len(buffer) - start - HEADER_BYTES
    if length > max_frame_bytes:
        del buffer[start:]
        raise ValueError(
            f"{type(value).__name__} encodes to {length} bytes, over the frame limit "
            f"of {max_frame_bytes}: split it (snapshots go in chunks)"
        )
    _HEADER.pack_into(buffer, start, length)


def encode_message(msg: Message, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame (length prefix + msgpack body) carrying ``msg``, ready to write.

    Raises ``ValueError`` if the body exceeds ``max_frame_bytes``: the receiver would
    refuse it and close the connection.
    """
    buffer = bytearray()
    _append_frame(buffer, msg, max_frame_bytes)
    return bytes(buffer)


def encode_frames(msgs: Iterable[Message], *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """The frames of ``msgs``, concatenated in order into one buffer for one write."""
    buffer = bytearray()
    for msg in msgs:
        _append_frame(buffer, msg, max_frame_bytes)
    return bytes(buffer)


def encode_replies(msg: ClientReplies, *, batched: bool = True) -> bytes:
    """The frames of ``msg`` for a client: one frame if ``batched`` (a connection of
    client protocol 2), else one frame per reply (protocol 1, and the peers). A batch
    over the frame limit goes one frame per reply too (a reply alone over the limit
    raises ``ValueError``, as ``encode_message`` does)."""
    if batched:
        try:
            return encode_message(msg)
        except ValueError:
            pass
    return encode_frames(msg.replies)


def encode_hello(hello: Hello) -> bytes:
    """The handshake frame carrying ``hello``."""
    buffer = bytearray()
    if hello.token:
        _append_frame(buffer, hello, MAX_HELLO_BYTES)
    else:
        plain = _HelloWithoutToken(
            hello.magic, hello.version, hello.cluster, hello.node, hello.role
        )
        _append_frame(buffer, plain, MAX_HELLO_BYTES)
    return bytes(buffer)


def decode_message(body: bytes | bytearray | memoryview) -> Message:
    """Decode one frame body (without its length prefix) strictly into a ``Message``.

    Raises ``ProtocolViolation`` when ``body`` is not exactly one known message.
    """
    try:
        return _message_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolViolation(f"undecodable frame of {len(body)} bytes: {exc}") from None


def check_hello(
    hello: Hello,
    expected_cluster: str,
    expected_version: int = PROTOCOL_VERSION,
    *,
    expected_role: str | None = None,
    oldest_version: int | None = None,
) -> None:
    """Raise ``HandshakeError`` unless ``hello`` comes from a compatible pyxos process.

    ``oldest_version``: versions from it to ``expected_version`` are accepted (a
    client port: ``CLIENT_PROTOCOL_VERSION``); None: exactly ``expected_version``.
    The message says exactly what differs (``cluster 'b' != 'a'``), because the usual
    cause is a misconfigured node that an operator has to find from one log line.
    """
    if hello.magic != MAGIC:
        raise HandshakeError(f"wrong magic {hello.magic!r}: not a pyxos process")
    if hello.cluster != expected_cluster:
        raise HandshakeError(f"cluster {hello.cluster!r} != {expected_cluster!r}")
    if oldest_version is not None and oldest_version <= hello.version <= expected_version:
        pass
    elif oldest_version is not None:
        raise HandshakeError(
            f"protocol version {hello.version} is not in {oldest_version}..{expected_version}"
            " (a client newer than this node: upgrade the nodes first)"
        )
    elif hello.version != expected_version:
        raise HandshakeError(
            f"protocol version {hello.version} != {expected_version} (upgrade every node)"
        )
    if hello.role not in ("peer", "client"):
        raise HandshakeError(f"unknown role {hello.role!r}")
    if expected_role is not None and hello.role != expected_role:
        raise HandshakeError(f"role {hello.role!r} != {expected_role!r}")
    if hello.role == "peer" and hello.node < 1:
        raise HandshakeError(f"peer node id {hello.node} is not >= 1")


class FrameDecoder:
    """Incremental, sans-IO frame parser: bytes in, typed messages out.

    With ``expect_hello=True`` the first frame must be a ``Hello``: it is decoded on its
    own (limited to ``MAX_HELLO_BYTES``), stored in ``hello`` and passed to ``on_hello``
    before any later frame is parsed, so ``on_hello`` may raise ``HandshakeError`` to
    refuse the connection and may set up state (the peer's id) that the messages of
    the same chunk depend on.

    After a ``ProtocolViolation`` the stream cannot be resynchronized: every later
    ``feed`` raises the same violation.
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        expect_hello: bool = False,
        on_hello: Callable[[Hello], None] | None = None,
    ) -> None:
        if not 1 <= max_frame_bytes <= _MAX_LENGTH_FIELD:
            raise ValueError(f"max_frame_bytes must be in [1, 2**32-1], not {max_frame_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self.hello: Hello | None = None
        """The handshake, once received (``expect_hello`` mode only)."""
        self._expect_hello = expect_hello
        self._on_hello = on_hello
        # Invariant: holds only an incomplete frame (a prefix shorter than one header,
        # or a header plus part of a body no longer than the limit).
        self._buffer = bytearray()
        self._failed: ProtocolViolation | None = None
        self.frames = 0
        """Frames completed so far, the ``Hello`` included (a frame that starts after
        another ended is a new frame, for the link layer's frame timeout)."""

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buffer)

    def release(self) -> None:
        """Drop (and free) any incomplete frame; for a connection that is closing."""
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data``; return every message whose frame is now complete, in order.

        Raises ``ProtocolViolation`` (or ``HandshakeError``) on a bad frame; the
        messages decoded earlier in the same call are discarded with it.
        """
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(data)
        except ProtocolViolation as violation:
            self._failed = violation
            self._buffer = bytearray()
            raise

    def _feed(self, data: bytes) -> list[Message]:
        buffer = self._buffer
        if buffer:
            buffer += data
            with memoryview(buffer) as view:
                messages, consumed = self._parse(view)
            if consumed == len(buffer):
                # A fresh buffer rather than a deletion: the big one (a large frame
                # that just completed) is freed now, not kept at its grown size.
                self._buffer = bytearray()
            else:
                del buffer[:consumed]
        else:
            with memoryview(data) as view:
                messages, consumed = self._parse(view)
                if consumed < len(view):
                    buffer += view[consumed:]
        self.frames += len(messages)
        return messages

    def _parse(self, view: memoryview) -> tuple[list[Message], int]:
        messages: list[Message] = []
        end_of_data = len(view)
        position = 0
        while end_of_data - position >= HEADER_BYTES:
            (length,) = _HEADER.unpack_from(view, position)
            limit = MAX_HELLO_BYTES if self._expect_hello else self.max_frame_bytes
            if length > limit:
                what = "handshake frame" if self._expect_hello else "frame"
                raise ProtocolViolation(
                    f"{what} of {length} bytes exceeds the limit of {limit}",
                    counter="oversized_frames",
                )
            if length == 0:
                raise ProtocolViolation("empty frame")
            start = position + HEADER_BYTES
            end = start + length
            if end > end_of_data:
                break
            body = view[start:end]
            if self._expect_hello:
                self._receive_hello(body)
            else:
                messages.append(decode_message(body))
            position = end
        return messages, position

    def _receive_hello(self, body: memoryview) -> None:
        try:
            hello = _hello_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise ProtocolViolation(f"first frame is not a Hello: {exc}") from None
        self._expect_hello = False
        self.hello = hello
        self.frames += 1
        if self._on_hello is not None:
            self._on_hello(hello)
