"""The lean HTTP/1.1 path's request parser and answer builder (``pyxos.server.http_fast``).

Theory of operation
-------------------
``parse_head`` decides, from a request head alone, whether the lean path serves the
request: only a plainly well-formed ``GET``/``PUT /v1/kv/KEY`` (the rules are listed in
``pyxos.server.http_fast``'s notes); anything else returns None and the connection goes
to aiohttp. ``http_response`` writes one whole answer (status line, headers, body) as
aiohttp would answer the same request through ``pyxos.server.http_kv``'s handlers.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus

__all__ = [
    "MAX_FAST_BODY",
    "MAX_HEAD",
    "MAX_HEADERS",
    "FastRequest",
    "http_response",
    "parse_head",
]

MAX_HEAD = 8190
"""Bytes of a request head (request line and headers) this path reads (aiohttp's line limit)."""
MAX_HEADERS = 100
"""Header fields of a request this path serves (aiohttp's limit is 128)."""
MAX_FAST_BODY = 64 * 1024
"""The largest PUT body served here; a larger one goes to aiohttp (with its 413)."""

_HEAD_RE = re.compile(
    rb"(GET|PUT) /v1/kv/([A-Za-z0-9_~.\-]+(?:/[A-Za-z0-9_~.\-]+)*) HTTP/1\.1"
    rb"((?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z\-]+:[\t\x20-\x7e]*)*)"
)
_REFUSED = re.compile(rb"\r\n(?:transfer-encoding|expect|upgrade):")
_CONNECTION = b"\r\nconnection:"
_LENGTH = b"\r\ncontent-length:"
_AUTH = b"\r\nauthorization:"
_HOST = b"\r\nhost:"
_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def _field(fields: bytes, at: int, name: bytes) -> bytes:
    """The value, trimmed, of the field whose line (with its CRLF) starts at ``at``."""
    end = fields.find(b"\r\n", at + 2)
    return fields[at + len(name) : end if end >= 0 else len(fields)].strip(b" \t")


class FastRequest:
    """One request this path serves: ``op`` ``"get"`` or ``"put"``, the key, the body
    length, the bearer token (None: no Authorization header), and whether the client
    asked to close the connection after the answer (``Connection: close``)."""

    __slots__ = ("close", "key", "length", "op", "token")

    def __init__(
        self, op: str, key: str, length: int, token: str | None, close: bool = False
    ) -> None:
        self.op = op
        self.key = key
        self.length = length
        self.token = token
        self.close = close


def parse_head(head: bytes) -> FastRequest | None:
    """The request of ``head`` (the bytes before its blank line, without it) if this
    path serves it, else None (see the module notes: None hands the connection over).
    One regular expression checks the request line and the shape of every field;
    the few fields that matter are found in the lower-cased field block."""
    m = _HEAD_RE.fullmatch(head)
    if m is None:
        return None
    target = m.group(2)
    if target.startswith(b".") or b"/." in target:  # dot segments: aiohttp normalises them
        return None
    fields = m.group(3)
    length = -1
    token: str | None = None
    close = False
    if not fields:
        return None  # no Host: aiohttp's 400 (HTTP/1.1 requires exactly one)
    lower = fields.lower()
    if fields.count(b"\r\n") > MAX_HEADERS or _REFUSED.search(lower):
        return None
    if lower.count(_HOST) != 1:
        return None
    at = lower.find(_LENGTH)
    if at >= 0:
        value = _field(fields, at, _LENGTH)
        if lower.find(_LENGTH, at + 2) >= 0 or not value.isdigit() or len(value) > 9:
            return None
        length = int(value)
    at = lower.find(_AUTH)
    if at >= 0:
        if lower.find(_AUTH, at + 2) >= 0:
            return None
        scheme, _, credentials = _field(fields, at, _AUTH).partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        token = credentials.strip(b" \t").decode("ascii")
    at = lower.find(_CONNECTION)
    if at >= 0:  # keep-alive (HTTP/1.1's default) or close; anything else: aiohttp
        value = _field(lower, at, _CONNECTION)
        if lower.find(_CONNECTION, at + 2) >= 0 or value not in (b"keep-alive", b"close"):
            return None
        close = value == b"close"
    if m.group(1) == b"GET":
        if length > 0:
            return None
        return FastRequest("get", target.decode("ascii"), 0, token, close)
    if length < 0 or length > MAX_FAST_BODY:
        return None
    return FastRequest("put", target.decode("ascii"), length, token, close)


class _Date:
    """The ``Date`` header's value, formatted at most once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        t = int(time.time())
        if t != cls.second:
            cls.second = t
            cls.value = formatdate(t, usegmt=True).encode("ascii")
        return cls.value


def http_response(
    status: int,
    body: bytes,
    content_type: str = "application/json; charset=utf-8",
    headers: dict[str, str] | None = None,
    *,
    close: bool = False,
) -> bytes:
    """One whole HTTP/1.1 response: status line, headers, body."""
    reason = _REASONS.get(status, b"")
    parts = [_HEAD % (status, reason, content_type.encode("latin-1"), len(body), _Date.now())]
    if headers:
        for name, value in headers.items():
            if name.lower() not in ("content-type", "content-length", "date", "server"):
                parts.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


_HEAD = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\nServer: pyxos\r\n"
