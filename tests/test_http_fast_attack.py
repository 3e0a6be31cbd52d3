"""Adversarial requests on the HTTP port's lean path (``pyxos.server.http_fast``), over
real sockets on 127.0.0.1 against an in-process one-node cluster: long pipelines of
requests answered at once, a client that pipelines and reads its answers late, a
request split at every byte, and the same bad or refused requests answered alike by
the lean path and by aiohttp. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from pathlib import Path

from pyxos.certs import init_certs
from pyxos.client.aio import AsyncClient
from pyxos.net.limits import PortGuard, PortLimits
from pyxos.net.tls import TlsFiles, client_context
from pyxos.server.http_fast import FastConnection, FastConnections, FastRequest, http_response
from pyxos.server.node import NodeServer
from test_http_fast import HOST, get, put, read_response
from test_server_harness import cluster_configs, start_nodes, stop_nodes, wait_for
from test_server_limits import one_node, serves


def test_thousands_of_pipelined_requests_answered_at_once_are_all_answered(
    tmp_path: Path,
) -> None:
    """Requests the lean path answers without the node (a 400: the value is not UTF-8)
    pipelined by the thousand in one write: each answered, in order, and the
    connection still served after them (each answer served the next one by a nested
    call: a RecursionError, a 500 and the connection reset, nothing answered)."""
    n = 3000

    async def body(node: NodeServer, client: AsyncClient) -> None:
        assert node.http is not None
        reader, writer = await asyncio.open_connection(HOST, node.http.port)
        writer.write(put("bad", b"\xff") * n + put("good", b"v") + get("good"))
        statuses = Counter()
        for _ in range(n):
            status, _, data = await read_response(reader)
            statuses[status] += 1
        assert statuses == {400: n}
        assert (await read_response(reader))[:1] == (200,)
        status, _, data = await read_response(reader)
        assert (status, json.loads(data)) == (200, {"key": "good", "value": "v"})
        assert node.http.fast.handed_over == 0
        writer.close()
        await serves(client, "after")

    one_node(tmp_path, body, http_port=0)


def test_a_client_that_pipelines_and_reads_late_gets_every_answer(tmp_path: Path) -> None:
    """Pipelined GETs of a large value, read only once the node's writes to the client
    are blocked (``pause_writing``): when the client catches up, the node serves the
    requests it had already read (they stayed unserved until the frame timeout
    closed the connection)."""
    n = 300
    value = b"x" * 60_000

    async def body(node: NodeServer, client: AsyncClient) -> None:
        assert node.http is not None
        fast = node.http.fast
        reader, writer = await asyncio.open_connection(HOST, node.http.port)
        writer.write(put("big", value))
        assert (await read_response(reader))[0] == 200
        (conn,) = fast.open
        writer.write(get("big") * n)
        await writer.drain()
        transport = conn.transport
        assert transport is not None
        await wait_for(
            lambda: conn.paused and transport.get_write_buffer_size() > 0,
            10.0,
            "the node's writes to block",
        )
        for i in range(n):
            status, _, data = await read_response(reader)
            assert status == 200, i
            assert len(data) > len(value), i
        writer.close()
        await serves(client, "after")

    one_node(tmp_path, body, http_port=0, frame_timeout=30.0)


def test_no_host_two_hosts_and_bare_lf_are_refused_as_aiohttp_refuses_them(
    tmp_path: Path,
) -> None:
    """HTTP/1.1 requires exactly one Host and CRLF line ends: aiohttp answers 400. The
    lean path served a request without Host or with two (a PUT applied that aiohttp
    refuses) and never answered a head ended by bare LFs (closed at the frame timeout,
    no answer); now it hands them over and the answers are aiohttp's, on a fresh
    connection as on one already handed over."""
    cases = [
        b"PUT /v1/kv/nohost HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        b"GET /v1/kv/nohost HTTP/1.1\r\n\r\n",
        b"PUT /v1/kv/twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 1\r\n\r\nx",
        b"GET /v1/kv/k HTTP/1.1\nHost: x\n\n",
        b"PUT /v1/kv/lf HTTP/1.1\nHost: x\nContent-Length: 1\n\nx",
    ]

    async def answer(port: int, request: bytes, hand_over: bool) -> int:
        reader, writer = await asyncio.open_connection(HOST, port)
        if hand_over:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_response(reader)
        writer.write(request)
        status = (await read_response(reader))[0]
        writer.close()
        return status

    async def body(node: NodeServer, client: AsyncClient) -> None:
        assert node.http is not None
        port = node.http.port
        for request in cases:
            lean = await answer(port, request, hand_over=False)
            aio = await answer(port, request, hand_over=True)
            assert (lean, aio) == (400, 400), request
        for key in ("nohost", "twohosts", "lf"):
            assert await client.get(key) is None, key
        await serves(client, "after")

    one_node(tmp_path, body, http_port=0, frame_timeout=30.0)


def test_a_client_that_half_closes_while_served_is_answered_then_closed(tmp_path: Path) -> None:
    """A request, then the start of another, then the client's FIN (write_eof) while
    the first is being served: the answer, then the connection closed at once, as
    aiohttp closes a half-closed one (it stayed open until the frame timeout: a
    partial head handed over without the EOF, a partial body waited for)."""

    async def body(node: NodeServer, client: AsyncClient) -> None:
        assert node.http is not None
        http = node.http
        await client.put("k", "v")
        partial_body = put("x", b"ab").replace(b"Content-Length: 2", b"Content-Length: 5")
        for rest in (b"GET /v1/kv/k HTTP/1.1\r\nHo", partial_body):
            reader, writer = await asyncio.open_connection(HOST, http.port)
            writer.write(get("k") + rest)
            writer.write_eof()
            status, _, data = await read_response(reader)
            assert (status, json.loads(data)) == (200, {"key": "k", "value": "v"})
            assert await asyncio.wait_for(reader.read(), 10.0) == b""
            writer.close()
        assert http.counters["client_disconnects"] == 1  # the body that never came
        assert http.counters["frame_timeouts"] == 0
        await wait_for(lambda: not http.guard.connections, 5.0, "every connection closed")
        await serves(client, "after")

    one_node(tmp_path, body, http_port=0, frame_timeout=30.0)


def test_the_same_attacks_over_tls(tmp_path: Path) -> None:
    """Over TLS (the transport calls the flow-control callbacks in its own places):
    thousands of pipelined requests answered at once, pipelined large answers read
    late, then a hand-over to aiohttp, each answered in full and in order (asyncio's
    TLS transport has no half-close to try)."""
    certs = init_certs(tmp_path / "pki", nodes=1)
    cert, key = certs.nodes[1]
    (config,) = cluster_configs(tmp_path, 1, http_port=0)
    config = dataclasses.replace(config, tls_ca=certs.ca, tls_cert=cert, tls_key=key)
    context = client_context(TlsFiles(certs.ca))
    n, value = 2000, b"x" * 60_000

    async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, port, ssl=context, server_hostname="127.0.0.1")

    async def main() -> None:
        (node,) = await start_nodes([config])
        try:
            await wait_for(lambda: node.is_leader, 5.0, "the node to lead")
            assert node.http is not None
            port = node.http.port
            reader, writer = await connect(port)
            writer.write(put("bad", b"\xff") * n + put("big", value))
            for _ in range(n):
                assert (await read_response(reader))[0] == 400
            assert (await read_response(reader))[0] == 200
            writer.write(get("big") * 300 + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            (conn,) = node.http.fast.open
            await wait_for(lambda: conn.paused, 10.0, "the node's writes to block")
            for i in range(300):
                status, _, data = await read_response(reader)
                assert status == 200 and len(data) > len(value), i
            status, headers, _ = await read_response(reader)
            assert status == 200 and "aiohttp" in headers.get("server", "")
            writer.close()
            assert node.http.fast.handed_over == 1
        finally:
            await stop_nodes([node])

    asyncio.run(asyncio.wait_for(main(), 120.0))


class _Transport(asyncio.Transport):
    """What a FastConnection writes, and whether it paused or closed (no socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_every_split_of_a_pipelined_stream_serves_the_same_requests() -> None:
    """Two pipelined requests (a PUT with a body, a GET) cut into two pieces at every
    byte boundary, and fed one byte at a time: the same two requests served, in
    order, with the same body, and nothing handed over."""
    stream = put("k", b"va\r\n\r\nlue") + get("k/x")

    async def serve_pieces(pieces: list[bytes]) -> list[tuple[str, str, bytes]]:
        served: list[tuple[str, str, bytes]] = []

        def serve(conn: FastConnection, request: FastRequest, body: bytes) -> None:
            served.append((request.op, request.key, body))
            conn.respond(http_response(200, b"{}"))

        def no_aiohttp() -> asyncio.Protocol:
            raise AssertionError("handed over")

        fast = FastConnections(PortGuard(PortLimits()), serve, no_aiohttp)
        conn = fast()
        conn.connection_made(_Transport())
        for piece in pieces:
            conn.data_received(piece)
        return served

    async def main() -> None:
        expected = [("put", "k", b"va\r\n\r\nlue"), ("get", "k/x", b"")]
        for cut in range(1, len(stream)):
            assert await serve_pieces([stream[:cut], stream[cut:]]) == expected, cut
        one_by_one = [stream[i : i + 1] for i in range(len(stream))]
        assert await serve_pieces(one_by_one) == expected

    asyncio.run(main())
