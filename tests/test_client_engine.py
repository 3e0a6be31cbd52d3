"""The client engine (``pyxos.client.engine``) with a scripted transport: which node each
attempt goes to, when a call ends and with which verdict, what the route learns."""

from __future__ import annotations

import asyncio
import random

import pytest

from pyxos.client.aio import AsyncClient
from pyxos.client.engine import (
    Call,
    NodeUnavailable,
    NoLeader,
    OutcomeUnknown,
    Route,
    drive,
)
from pyxos.client.local import LocalClients
from pyxos.client.mux import ClientPool, Session
from pyxos.core.messages import ClientReply, ClientRequest, Message
from pyxos.net.codec import encode_message
from pyxos.net.link import FramedProtocol
from pyxos.statemachine.kv import Result, encode_result

CLIENT, SEQ = 7, 3


def refused(src: int, leader: int) -> ClientReply:
    return ClientReply(src, CLIENT, SEQ, False, b"", leader)


def answered(src: int, leader: int = 0) -> ClientReply:
    return ClientReply(src, CLIENT, SEQ, True, b"result", leader)


def run(
    route: Route, script: list[ClientReply | None], *, timeout: float = 5.0, read: bool = False
) -> tuple[list[int], ClientReply | BaseException, Call]:
    """Drive one call whose attempts get the ``script``'s replies in turn (then silence);
    the node indices attempted, and the reply or the verdict."""
    tried: list[int] = []

    async def main() -> tuple[ClientReply | BaseException, Call]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        call = Call(
            route,
            now + timeout,
            timeout,
            "put 'k'",
            refused_until=now if read else None,
            rng=random.Random(0),
        )

        async def attempt(index: int, deadline: float) -> ClientReply | None:
            tried.append(index)
            if script:
                return script.pop(0)
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            return None

        try:
            return await drive(call, attempt, route.target, None, False), call
        except (OutcomeUnknown, NoLeader, NodeUnavailable) as e:
            return e, call

    outcome, call = asyncio.run(main())
    return tried, outcome, call


def test_a_redirect_to_a_known_leader_goes_straight_there_and_becomes_the_target() -> None:
    route = Route(3, {1: 0, 2: 1, 3: 2})
    tried, outcome, call = run(route, [refused(1, leader=3), answered(3)])
    assert tried == [0, 2]
    assert isinstance(outcome, ClientReply) and outcome.result == b"result"
    assert (route.target, route.leader, route.answered_by, call.retries) == (2, 3, 3, 1)


def test_no_leader_yet_moves_on_to_the_next_node_and_is_counted() -> None:
    route = Route(3, {1: 0, 2: 1, 3: 2})
    tried, outcome, _ = run(route, [refused(1, 0), refused(2, 0), answered(3)])
    assert tried == [0, 1, 2]
    assert isinstance(outcome, ClientReply)
    assert route.no_leader_replies == 2


def test_a_relayed_answer_sends_the_next_command_to_the_leader_itself() -> None:
    route = Route(3, {1: 0, 2: 1, 3: 2})
    run(route, [answered(1, leader=2)])  # node 1 forwarded to node 2 and relayed
    assert (route.answered_by, route.leader, route.target) == (1, 2, 1)


def test_silence_until_the_deadline_is_an_unknown_outcome_never_a_failure() -> None:
    route = Route(2)
    tried, outcome, _ = run(route, [refused(1, 0)], timeout=0.2)
    assert isinstance(outcome, OutcomeUnknown)
    assert "may or may not" in str(outcome)
    assert tried[:2] == [0, 1]  # the refusal did not end the call: it went on


def test_a_refused_write_is_never_a_definite_failure() -> None:
    """A write refused until its deadline may still sit in a slot that gets chosen."""
    route = Route(1)
    _, outcome, _ = run(route, [refused(1, 0)] * 10_000, timeout=0.1)
    assert isinstance(outcome, OutcomeUnknown)


def test_a_read_refused_past_its_limit_ends_with_no_leader_naming_the_last_leader() -> None:
    route = Route(1)
    tried, outcome, _ = run(route, [refused(1, 2)], read=True)
    assert tried == [0]
    assert isinstance(outcome, NoLeader) and outcome.leader == 2


def test_the_route_learns_addresses_from_replies_once() -> None:
    route = Route(3)
    route.learn(2, 1)
    route.learn(2, 0)  # a later reply relayed elsewhere does not move it
    route.learn(0, 2)  # src 0 is no node
    assert route.index_of == {2: 1}
    with pytest.raises(ValueError):
        Route(0)


# --- the transports, against scripted nodes on loopback -----------------------------------


class ScriptedNode:
    """A node of the client port's protocol that answers by a script: ``"silent"``
    (never answers), ``"refuse"`` ("no leader yet") or ``"answer"`` (ok). It records
    every request it received as ``(client, seq, command bytes)``."""

    def __init__(self, node_id: int, behaviour: str, seen: list[tuple[int, int, int, bytes]]):
        self.node_id = node_id
        self.behaviour = behaviour
        self.seen = seen
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        def factory() -> FramedProtocol:
            def on_messages(_: int, msgs: list[Message]) -> None:
                for msg in msgs:
                    if not isinstance(msg, ClientRequest):
                        continue
                    self.seen.append((self.node_id, msg.client, msg.seq, msg.command))
                    if self.behaviour == "refuse":
                        reply = ClientReply(self.node_id, msg.client, msg.seq, False, b"", 0)
                    elif self.behaviour == "answer":
                        result = encode_result(Result(ok=True))
                        reply = ClientReply(
                            self.node_id, msg.client, msg.seq, True, result, self.node_id
                        )
                    else:
                        continue
                    protocol.send(encode_message(reply))

            protocol = FramedProtocol(on_messages, accept_hello=lambda hello: 0)
            return protocol

        self.server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("kind", ["async", "pool"])
def test_every_attempt_of_a_command_carries_the_same_client_seq_and_bytes(kind: str) -> None:
    """A silent node, then one that says "no leader yet", then one that answers: three
    attempts of one put, all with the same (client, seq) and command bytes (what makes
    the store apply it once); the next command gets the next seq and starts at the node
    that answered."""
    seen: list[tuple[int, int, int, bytes]] = []
    records: list[dict[str, object]] = []

    async def main() -> None:
        nodes = [
            ScriptedNode(1, "silent", seen),
            ScriptedNode(2, "refuse", seen),
            ScriptedNode(3, "answer", seen),
        ]
        addresses = [await n.start() for n in nodes]
        options = {"attempt_timeout": 0.2, "timeout": 10.0, "history": records.append}
        client: AsyncClient | ClientPool
        try:
            if kind == "async":
                client = AsyncClient(addresses, **options)  # type: ignore[arg-type]
                target: AsyncClient | Session = client
            else:
                client = ClientPool(addresses, connections=1, **options)  # type: ignore[arg-type]
                target = client.session()
            await target.put("k", "v")
            assert [node for node, *_ in seen] == [1, 2, 3]
            assert len({(c, s, command) for _, c, s, command in seen}) == 1
            assert target.retries == 2 and target.answered_by == 3
            await target.put("k", "w")
            assert seen[-1][0] == 3 and seen[-1][2] == seen[0][2] + 1
            await client.close()
        finally:
            for n in nodes:
                n.close()

    asyncio.run(main())
    assert [(r["op"], r["ok"]) for r in records] == [("put", True), ("put", True)]


@pytest.mark.parametrize("kind", ["async", "pool"])
def test_a_command_refused_until_its_deadline_is_unknown_in_the_history(kind: str) -> None:
    """Refused by every node until the timeout: OutcomeUnknown, and an unknown outcome
    (``return`` and ``ok`` null) in the history, never ``ok: false``."""
    seen: list[tuple[int, int, int, bytes]] = []
    records: list[dict[str, object]] = []

    async def main() -> None:
        node = ScriptedNode(1, "refuse", seen)
        address = await node.start()
        options = {"attempt_timeout": 0.2, "timeout": 1.0, "history": records.append}
        client: AsyncClient | ClientPool
        try:
            if kind == "async":
                client = AsyncClient([address], **options)  # type: ignore[arg-type]
                target: AsyncClient | Session = client
            else:
                client = ClientPool([address], connections=1, **options)  # type: ignore[arg-type]
                target = client.session()
            with pytest.raises(OutcomeUnknown, match="may or may not"):
                await target.put("k", "v")
            await client.close()
        finally:
            node.close()

    asyncio.run(main())
    assert seen and len({(c, s) for _, c, s, _ in seen}) == 1
    assert [(r["op"], r["return"], r["ok"]) for r in records] == [("put", None, None)]


# --- the in-process transport (the HTTP API's) ----------------------------------------------


def test_local_clients_resubmit_the_same_request_and_reuse_a_logical_client() -> None:
    """A node that says "no leader yet", stays silent once, then answers: the three
    submissions are the same (client, seq, bytes). The next call borrows the same
    logical client with the next seq; an encoding that raises uses up no seq."""
    submitted: list[ClientRequest] = []
    script = ["refuse", "silent", "answer", "answer"]

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def submit(requests: list[ClientRequest]) -> None:
            (request,) = requests
            submitted.append(request)
            how = script.pop(0)
            if how != "silent":
                reply = ClientReply(1, request.client, request.seq, how == "answer", b"r", 0)
                loop.call_soon(clients.on_reply, reply)

        clients = LocalClients(submit, timeout=10.0, attempt_timeout=0.05)
        clients.sink = 42
        reply = await clients.call(lambda c, s: f"{c}/{s}".encode(), "put 'k'")
        assert reply.ok and reply.result == b"r"
        assert len({(r.src, r.client, r.seq, r.command) for r in submitted}) == 1
        assert submitted[0].src == 42 and clients.route.no_leader_replies == 1

        def refuse_to_encode(client: int, seq: int) -> bytes:
            raise ValueError("bad key")

        with pytest.raises(ValueError):
            await clients.call(refuse_to_encode, "put 'bad'")
        await clients.call(lambda c, s: b"x", "put 'k'")
        first, last = submitted[0], submitted[-1]
        assert (last.client, last.seq) == (first.client, first.seq + 1)

    asyncio.run(main())


def test_local_clients_end_a_refused_read_with_no_leader_and_a_write_with_unknown() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def submit(requests: list[ClientRequest]) -> None:
            for r in requests:
                loop.call_soon(clients.on_reply, ClientReply(1, r.client, r.seq, False, b"", 0))

        clients = LocalClients(submit, timeout=0.2, read_wait=0.05)
        with pytest.raises(NoLeader):
            await clients.call(lambda c, s: b"get", "get 'k'", read_only=True)
        with pytest.raises(OutcomeUnknown):
            await clients.call(lambda c, s: b"put", "put 'k'")

    asyncio.run(main())
