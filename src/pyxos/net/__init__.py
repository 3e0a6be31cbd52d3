"""pyxos.net: the wire codec and the asyncio TCP links between nodes.

Theory of operation
-------------------
``codec`` is sans-IO: length-prefixed msgpack frames, the ``Hello`` handshake and a
strict incremental ``FrameDecoder`` into the ``pyxos.core.messages.Message`` union.
``link`` puts it on asyncio sockets: ``FramedProtocol`` (one connection, coalesced
writes, bad input closes only that connection and is counted), ``PeerLinks`` (one
outgoing persistent link per peer, bounded lossy queues, jittered reconnect) and
``serve_peers`` / ``serve_framed`` (the accepting side). ``limits`` bounds what the
connections of one listening port may make a node hold (connections, bytes of
unfinished frames, time). The layer imports only ``pyxos.core``, the
standard library and msgspec; choosing an event loop (uvloop) is the server's business.
"""

from pyxos.net.codec import (
    MAX_FRAME_BYTES,
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
)
from pyxos.net.limits import PortGuard, PortLimits
from pyxos.net.link import (
    COUNTER_NAMES,
    DEFAULT_MAX_QUEUE_FRAMES,
    FramedProtocol,
    FramedServer,
    OnMessages,
    PeerLinks,
    PeerServer,
    backoff_delay,
    new_counters,
    serve_framed,
    serve_peers,
)

__all__ = [
    "COUNTER_NAMES",
    "DEFAULT_MAX_QUEUE_FRAMES",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "FramedProtocol",
    "FramedServer",
    "HandshakeError",
    "Hello",
    "OnMessages",
    "PeerLinks",
    "PeerServer",
    "PortGuard",
    "PortLimits",
    "ProtocolViolation",
    "backoff_delay",
    "check_hello",
    "decode_message",
    "encode_frames",
    "encode_hello",
    "encode_message",
    "new_counters",
    "serve_framed",
    "serve_peers",
]
