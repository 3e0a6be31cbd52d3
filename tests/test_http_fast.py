"""The HTTP port's lean path for ``GET``/``PUT /v1/kv/KEY`` (``pyxos.server.http_fast``).

What it parses and what it leaves to aiohttp (unit tests of ``parse_head``), then raw
HTTP/1.1 over real sockets on 127.0.0.1 against an in-process one-node cluster: keep-
alive and pipelined requests answered in order on the lean path, a connection handed
over to aiohttp at its first other request (and served there), bad input answered with
a clear 4xx by whichever path has the connection, the port's body budget and frame
timeout, and the node serving throughout.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pyxos.client.aio import AsyncClient
from pyxos.server.http_fast import MAX_FAST_BODY, MAX_HEAD, http_response, parse_head
from pyxos.server.node import NodeServer
from test_server_harness import wait_for
from test_server_limits import one_node, serves

HOST = "127.0.0.1"


def test_parse_head_serves_plain_gets_and_puts() -> None:
    r = parse_head(b"PUT /v1/kv/k1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10")
    assert r is not None and (r.op, r.key, r.length, r.token) == ("put", "k1", 10, None)
    r = parse_head(b"GET /v1/kv/a/b.c~d_e-f HTTP/1.1\r\nAuthorization: Bearer  t0k \r\nHost:")
    assert r is not None and (r.op, r.key, r.length, r.token) == ("get", "a/b.c~d_e-f", 0, "t0k")
    r = parse_head(b"GET /v1/kv/k HTTP/1.1\r\nhost: x")  # only the Host HTTP/1.1 requires
    assert r is not None and r.key == "k"
    r = parse_head(b"GET /v1/kv/k HTTP/1.1\r\ncontent-length: 0\r\nHost: x")
    assert r is not None and r.length == 0 and not r.close
    r = parse_head(b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive")
    assert r is not None and not r.close
    r = parse_head(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nconnection:  close ")
    assert r is not None and r.close


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/kv/k/cas HTTP/1.1\r\nContent-Length: 2",  # another route
        b"DELETE /v1/kv/k HTTP/1.1",
        b"GET /v1/kv HTTP/1.1",
        b"GET /v1/kv/ HTTP/1.1",
        b"GET /v1/kv/k?stale=true HTTP/1.1",
        b"GET /v1/kv/%41 HTTP/1.1",  # percent-encoded: aiohttp decodes
        b"GET /v1/kv/a/../b HTTP/1.1",  # dot segments: aiohttp normalises
        b"GET /v1/kv/.k HTTP/1.1",
        b"GET /v1/kv/a//b HTTP/1.1",
        b"GET /v1/kv/k HTTP/1.0",
        b"GET  /v1/kv/k HTTP/1.1",
        b"get /v1/kv/k HTTP/1.1",
        b"PUT /v1/kv/k HTTP/1.1",  # no Content-Length
        b"PUT /v1/kv/k HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2",
        b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: -2",
        b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: 0x10",
        b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: %d" % (MAX_FAST_BODY + 1),
        b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue",
        b"GET /v1/kv/k HTTP/1.1\r\nContent-Length: 3",  # a GET with a body
        b"GET /v1/kv/k HTTP/1.1\r\nConnection: upgrade",
        b"GET /v1/kv/k HTTP/1.1\r\nConnection: close\r\nConnection: close",
        b"GET /v1/kv/k HTTP/1.1\r\nUpgrade: websocket",
        b"GET /v1/kv/k HTTP/1.1\r\nBad Header: x",  # not a token
        b"GET /v1/kv/k HTTP/1.1\r\n: x",
        b"GET /v1/kv/k HTTP/1.1\r\nX: a\x00b",  # a control character
        b"GET /v1/kv/k HTTP/1.1\r\nX: \xc3\xa9",  # not ASCII
        b"GET /v1/kv/k HTTP/1.1\r\n folded",  # obsolete line folding
        b"GET /v1/kv/k HTTP/1.1\r\nNoColon",
        b"GET /v1/kv/k HTTP/1.1\r\nAuthorization: Basic dTpw",
        b"GET /v1/kv/k HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b",
        b"GET /v1/kv/k HTTP/1.1" + b"\r\nX: 1" * 101,  # too many fields
        b"\xff\xfe garbage",
    ],
)
def test_parse_head_leaves_everything_else_to_aiohttp(head: bytes) -> None:
    assert parse_head(head) is None
    # Not for want of a Host: the same with one is still left to aiohttp.
    assert parse_head(head.replace(b" HTTP/1.1", b" HTTP/1.1\r\nHost: x", 1)) is None


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/kv/k HTTP/1.1",  # no Host: aiohttp's 400
        b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: 1",
        b"GET /v1/kv/k HTTP/1.1\r\nHost: a\r\nhost: b",  # two: aiohttp's 400
        b"GET /v1/kv/k HTTP/1.1\nHost: x",  # a bare LF
    ],
)
def test_parse_head_leaves_a_request_without_exactly_one_host_to_aiohttp(head: bytes) -> None:
    assert parse_head(head) is None


def test_http_response_has_the_headers_aiohttp_gives() -> None:
    data = http_response(503, b"{}", headers={"Retry-After": "1", "Content-Length": "9"})
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"Content-Length: 2" in lines and b"Retry-After: 1" in lines
    assert b"Content-Type: application/json; charset=utf-8" in lines
    assert sum(line.startswith(b"Content-Length") for line in lines) == 1
    assert any(line.startswith(b"Date: ") for line in lines) and body == b"{}"


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response from ``reader``: status, headers (lower-case names), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10.0)
    return status, headers, body


def put(key: str, value: bytes, extra: str = "") -> bytes:
    return (
        f"PUT /v1/kv/{key} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(value)}\r\n{extra}\r\n"
    ).encode() + value


def get(key: str) -> bytes:
    return f"GET /v1/kv/{key} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def test_keep_alive_pipelining_and_a_hand_over_to_aiohttp(tmp_path: Path) -> None:
    async def body(node: NodeServer, client: AsyncClient) -> None:
        assert node.http is not None
        fast = node.http.fast
        reader, writer = await asyncio.open_connection(HOST, node.http.port)
        # Keep-alive: one request at a time, then three pipelined in one write.
        writer.write(put("a", b"1"))
        assert await read_response(reader) == (200, _any, b'{"ok": true}')
        writer.write(put("b", b"2") + get("a") + get("missing"))
        assert (await read_response(reader))[2] == b'{"ok": true}'
        status, headers, data = await read_response(reader)
        assert (status, json.loads(data)) == (200, {"key": "a", "value": "1"})
        assert headers["content-type"] == "application/json; charset=utf-8"
        status, _, data = await read_response(reader)
        assert (status, json.loads(data)) == (404, {"error": "not found", "key": "missing"})
        assert fast.served >= 4 and fast.handed_over == 0
        # A value that is not UTF-8, a key too long: 400 with the reason, as aiohttp's.
        writer.write(put("c", b"\xff\xfe"))
        status, _, data = await read_response(reader)
        assert (status, json.loads(data)) == (400, {"error": "the value is not UTF-8 text"})
        writer.write(get("k" * 5000))
        status, _, data = await read_response(reader)
        assert status == 400 and "key longer than" in json.loads(data)["error"]
        # The first other request hands the connection over; aiohttp serves the rest,
        # the KV requests after it too.
        writer.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n" + put("d", b"4") + get("d"))
        status, _, data = await read_response(reader)
        assert status == 200 and "role" in json.loads(data)
        assert (await read_response(reader))[:1] == (200,)
        status, headers, data = await read_response(reader)
        assert (status, json.loads(data)) == (200, {"key": "d", "value": "4"})
        assert "aiohttp" in headers.get("server", "")  # served by aiohttp now
        assert fast.handed_over == 1
        writer.close()
        # Connection: close (as urllib sends it): answered on the lean path, then closed.
        r1, w1 = await asyncio.open_connection(HOST, node.http.port)
        w1.write(put("e", b"5", "Connection: close\r\n"))
        status, headers, data = await read_response(r1)
        assert (status, headers["connection"], data) == (200, "close", b'{"ok": true}')
        assert await asyncio.wait_for(r1.read(), 10.0) == b""
        assert fast.handed_over == 1
        # Bad input on a fresh connection: aiohttp's 4xx, the node serves on.
        for bad in (
            b"GARBAGE\r\n\r\n",
            b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
            b"GET /v1/kv/%ZZ HTTP/1.1\r\n\r\n",
            b"GET /v1/kv/k HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n",
            put("big", b"x" * (MAX_FAST_BODY + 1)).replace(
                b"Content-Length: %d" % (MAX_FAST_BODY + 1), b"Content-Length: 99999999"
            ),
        ):
            r2, w2 = await asyncio.open_connection(HOST, node.http.port)
            w2.write(bad)
            status = (await read_response(r2))[0]
            assert 400 <= status < 500, (bad[:60], status)
            w2.close()
        await serves(client, "binary-still")
        r3, w3 = await asyncio.open_connection(HOST, node.http.port)
        w3.write(get("a"))
        assert (await read_response(r3))[0] == 200
        w3.close()

    one_node(tmp_path, body, http_port=0)


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


_any = _Any()


def test_the_lean_path_keeps_the_body_budget_and_the_frame_timeout(tmp_path: Path) -> None:
    async def body(node: NodeServer, client: AsyncClient) -> None:
        assert node.http is not None
        http, guard = node.http, node.http.guard
        port = http.port
        # Over the port's budget with a body still coming: 503, closed. (The budget's
        # floor is 16 MiB: all but 1,000 bytes of it are held here meanwhile.)
        held = guard.limits.max_buffered_bytes - 1000
        assert guard.take(held)
        r1, w1 = await asyncio.open_connection(HOST, port)
        w1.write(put("k", b"x" * 1500).replace(b"Content-Length: 1500", b"Content-Length: 3000"))
        status, headers, _ = await read_response(r1)
        assert status == 503 and headers.get("connection") == "close"
        assert http.counters["buffer_budget_exceeded"] == 1
        guard.give(held)
        # A body that stops arriving: 408 after the frame timeout, closed, released.
        r2, w2 = await asyncio.open_connection(HOST, port)
        w2.write(put("k", b"x" * 100).replace(b"Content-Length: 100", b"Content-Length: 200"))
        status, _, _ = await read_response(r2)
        assert status == 408 and http.counters["frame_timeouts"] == 1
        assert await asyncio.wait_for(r2.read(), 10.0) == b""
        assert guard.buffered == 0
        # A head that never completes, and an idle connection: closed, no answer.
        r3, w3 = await asyncio.open_connection(HOST, port)
        w3.write(b"GET /v1/kv/k HTTP/1.1\r\nHost")
        r4, w4 = await asyncio.open_connection(HOST, port)
        assert await asyncio.wait_for(r3.read(), 10.0) == b""
        assert await asyncio.wait_for(r4.read(), 10.0) == b""
        # A client gone in the middle of a body: counted, released.
        _, w5 = await asyncio.open_connection(HOST, port)
        w5.write(put("k", b"x" * 10).replace(b"Content-Length: 10", b"Content-Length: 20"))
        w5.close()
        for w in (w1, w2, w3, w4):
            w.close()
        await wait_for(lambda: http.counters["client_disconnects"] == 1, 5.0, "the disconnect")
        assert http.fast.handed_over == 0  # all of it on the lean path
        await wait_for(lambda: not guard.connections and guard.buffered == 0, 5.0, "all gone")
        await serves(client, "binary-still")
        r6, w6 = await asyncio.open_connection(HOST, port)
        w6.write(put("after", b"ok") + get("after"))
        assert (await read_response(r6))[0] == 200
        assert json.loads((await read_response(r6))[2]) == {"key": "after", "value": "ok"}
        w6.close()

    one_node(tmp_path, body, http_port=0, frame_timeout=0.5)


def test_the_lean_path_answers_as_aiohttp_does(tmp_path: Path) -> None:
    """The same requests on a lean connection and on one handed over to aiohttp (its
    first request another route) get the same status, Content-Type and JSON body."""
    cases = [
        put("same", b"v1"),
        get("same"),
        get("absent"),
        put("bad", b"\xff"),
        get("k" * 5000),
        put("k" * 5000, b"x"),
        put("empty", b""),
        get("empty"),
    ]

    async def answers(port: int, hand_over: bool) -> list[tuple[int, str, object]]:
        reader, writer = await asyncio.open_connection(HOST, port)
        if hand_over:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_response(reader)
        out = []
        for request in cases:
            writer.write(request)
            status, headers, data = await read_response(reader)
            out.append((status, headers["content-type"], json.loads(data)))
        writer.close()
        return out

    async def body(node: NodeServer, client: AsyncClient) -> None:
        assert node.http is not None
        fast = node.http.fast
        lean = await answers(node.http.port, hand_over=False)
        assert fast.handed_over == 0 and fast.served >= len(cases)
        aio = await answers(node.http.port, hand_over=True)
        assert fast.handed_over == 1
        assert lean == aio
        assert [a[0] for a in lean] == [200, 200, 404, 400, 400, 400, 200, 200]

    one_node(tmp_path, body, http_port=0)
