"""Embedded nodes hosting replicated objects: 3 nodes in this process on 127.0.0.1.

Every node has its own data directory, WAL and fsync, exactly as ``pyxos serve``; the
nodes talk over TCP on loopback. Waits are on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pyxos.embedded import BlockingNode, CommandRejected, EmbeddedNode, node_config
from pyxos.localcluster import free_ports
from pyxos.objects import (
    Counter,
    Lock,
    Queue,
    Replicated,
    ReplicatedDict,
    ReplicatedError,
    decode_result,
    encode_call,
)

Objects = Callable[[], dict[str, Replicated]]


def _configs(tmp: Path, **settings: Any) -> list[Any]:
    ports = free_ports(3)
    peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    return [node_config(i, peers, tmp / f"n{i}", **settings) for i in peers]


@contextlib.asynccontextmanager
async def cluster(
    tmp: Path, objects: Objects, *, tick_interval: float | None = None, **settings: Any
) -> AsyncIterator[tuple[list[EmbeddedNode], list[dict[str, Replicated]]]]:
    configs = _configs(tmp, **settings)
    hosted = [objects() for _ in configs]
    nodes = [
        EmbeddedNode(c, o, tick_interval=tick_interval)
        for c, o in zip(configs, hosted, strict=True)
    ]
    try:
        for n in nodes:
            await n.start()
        for n in nodes:
            await n.wait_for_leader(15.0)
        yield nodes, hosted
    finally:
        for n in nodes:
            await n.stop()


async def until(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def test_objects_through_every_node_and_replicas_converge(tmp_path: Path) -> None:
    def objects() -> dict[str, Replicated]:
        return {"c": Counter(), "d": ReplicatedDict(), "q": Queue()}

    async def main() -> None:
        async with cluster(tmp_path, objects) as (_nodes, hosted):
            cs = [h["c"] for h in hosted]
            ds = [h["d"] for h in hosted]
            qs = [h["q"] for h in hosted]
            assert isinstance(cs[0], Counter) and isinstance(ds[0], ReplicatedDict)
            assert isinstance(qs[0], Queue)
            # Commands from every node (followers forward to the leader).
            results = await asyncio.gather(*(cs[i % 3].incr() for i in range(60)))
            assert sorted(results) == list(range(1, 61))  # each saw a distinct value
            for i in range(3):
                assert await cs[i].get() == 60
            await ds[1].set("k", {"a": [1, 2]})
            assert await ds[2].get("k") == {"a": [1, 2]}
            assert await ds[0].cas("k", {"a": [1, 2]}, "v2") is True
            assert await ds[1].cas("k", {"a": [1, 2]}, "v3") is False
            for i in range(10):
                await qs[i % 3].put(i)
            taken = [await qs[i % 3].get() for i in range(11)]
            assert taken == [*range(10), None]  # FIFO, then empty
            # Every replica applies every command: the local copies converge.
            await until(
                lambda: (
                    all(c.value == 60 for c in cs)
                    and all(d.data == {"k": "v2"} for d in ds)
                    and all(len(q.items) == q.head for q in qs)
                ),
                "every replica applied everything",
            )

    asyncio.run(main())


def test_lock_fencing_tokens_and_expiry_by_log_time(tmp_path: Path) -> None:
    def objects() -> dict[str, Replicated]:
        return {"lock": Lock()}

    async def main() -> None:
        async with cluster(tmp_path, objects, tick_interval=0.02) as (_nodes, hosted):
            a, b = hosted[0]["lock"], hosted[1]["lock"]
            t1 = await a.acquire("a", ttl=20)
            assert t1 == 1
            assert await b.acquire("b", ttl=20) in (None, 2)  # None unless 20 ticks passed
            # Ticks advance the log time on a quiet cluster: a's grant runs out, b's
            # acquire succeeds with a higher token, and a's token is refused from then on.
            t2 = None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15.0
            while t2 is None:
                assert loop.time() < deadline, "the lock never expired"
                t2 = await b.acquire("b", ttl=1000)
                await asyncio.sleep(0.02)
            assert t2 > t1
            assert await a.release("a", t1) is False
            assert await a.renew("a", t1, 10) is False
            state = await a.state()
            assert state.holder == "b" and state.token == t2
            assert await b.release("b", t2) is True
            assert await a.acquire("a", ttl=5) == t2 + 1

    asyncio.run(main())


def test_a_retried_call_applies_once(tmp_path: Path) -> None:
    def objects() -> dict[str, Replicated]:
        return {"c": Counter()}

    async def main() -> None:
        async with cluster(tmp_path, objects) as (nodes, hosted):
            counter = hosted[1]["c"]
            session = nodes[1].session()
            data = encode_call(counter.incr, 5)
            first = decode_result(await session.command(data))
            again = decode_result(await session.retry())  # same (client, seq)
            assert first == again == 5
            # The same session from another node (another path to the leader).
            other = nodes[2].session(session.client)
            other.seq, other.last = session.seq, session.last
            assert decode_result(await other.retry()) == 5
            assert await counter.get() == 5
            assert decode_result(await session.command(data)) == 10  # a new seq: applied

    asyncio.run(main())


def test_bad_calls_are_refused_and_the_node_keeps_serving(tmp_path: Path) -> None:
    def objects() -> dict[str, Replicated]:
        return {"c": Counter()}

    async def main() -> None:
        async with cluster(tmp_path, objects) as (nodes, hosted):
            counter = hosted[0]["c"]
            for junk in (b"", b"\xc1\xc1", b"\x93\xa1c\xa4incr\x91\xa1x", b"\x93\xa1z\xa1f\x90"):
                with pytest.raises(ReplicatedError, match="Refused"):
                    decode_result(await nodes[0].command(junk))
                with pytest.raises(ReplicatedError, match="Refused"):
                    decode_result(await nodes[1].query(junk))
            with pytest.raises(TypeError):
                await counter.incr(1, 2)
            assert await counter.incr() == 1

    asyncio.run(main())


def test_stopped_leader_every_acknowledged_call_applied_exactly_once(tmp_path: Path) -> None:
    def objects() -> dict[str, Replicated]:
        return {"q": Queue()}

    async def main() -> None:
        async with cluster(tmp_path, objects) as (nodes, hosted):
            leader = next(i for i, n in enumerate(nodes) if n.is_leader)
            followers = [i for i in range(3) if i != leader]
            acked: list[str] = []
            stop = asyncio.Event()

            async def writer(i: int, w: int) -> None:
                q = hosted[i]["q"]
                n = 0
                while not stop.is_set():
                    n += 1
                    item = f"{i}.{w}.{n}"
                    await q.put(item)
                    acked.append(item)

            tasks = [asyncio.ensure_future(writer(i, w)) for i in followers for w in range(4)]
            await until(lambda: len(acked) >= 100, "100 puts before the stop")
            await nodes[leader].stop()
            mark = len(acked)
            await until(lambda: len(acked) >= mark + 100, "100 puts after the stop", 30.0)
            stop.set()
            await asyncio.gather(*tasks)
            q = hosted[followers[0]]["q"]
            items = [await q.get() for _ in range(len(acked) + 1)]
            assert items[-1] is None
            items = items[:-1]
            assert sorted(items) == sorted(acked)  # each acknowledged put, exactly once

    asyncio.run(main())


def test_restarted_node_catches_up_from_snapshots(tmp_path: Path) -> None:
    def objects() -> dict[str, Replicated]:
        return {"c": Counter(), "d": ReplicatedDict()}

    async def main() -> None:
        async with cluster(tmp_path, objects, snapshot_every=5) as (nodes, hosted):
            for i in range(30):
                await hosted[i % 3]["c"].incr()
            config = nodes[2].config
            await nodes[2].stop()
            for i in range(30):
                await hosted[i % 2]["d"].set(f"k{i}", i)
            fresh = objects()
            restarted = EmbeddedNode(config, fresh, tick_interval=None)
            nodes[2] = restarted  # stopped by the cluster's exit
            await restarted.start()
            c, d = fresh["c"], fresh["d"]
            await until(
                lambda: c.value == 30 and len(d.data) == 30,
                "the restarted node applied everything",
            )
            assert await c.incr() == 31

    asyncio.run(main())


def test_blocking_facade(tmp_path: Path) -> None:
    configs = _configs(tmp_path)
    counters = [Counter() for _ in configs]
    nodes: list[BlockingNode] = []
    try:
        for config, counter in zip(configs, counters, strict=True):
            nodes.append(BlockingNode(config, {"counter": counter}, tick_interval=None))
        for n in nodes:
            n.wait_for_leader(15.0)
        proxies = [n.proxy(c) for n, c in zip(nodes, counters, strict=True)]
        assert proxies[0].incr() == 1
        assert proxies[1].incr(4) == 5
        assert nodes[2]["counter"].get() == 5
        assert nodes[2].call(counters[2].incr) == 6
        assert proxies[0].value >= 0  # plain attributes read the local replica
    finally:
        for n in nodes:
            n.close()
    with pytest.raises(RuntimeError, match="closed"):
        nodes[0].proxy(counters[0]).incr()


def test_any_application_embedded(tmp_path: Path) -> None:
    """Not only objects: any application of the contract runs embedded (here the
    counter of examples/counter.py, commands and queries as bytes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "example_counter", Path(__file__).resolve().parents[1] / "examples" / "counter.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def main() -> None:
        configs = _configs(tmp_path)
        nodes = [EmbeddedNode(c, app=module.Counter()) for c in configs]
        try:
            for n in nodes:
                await n.start()
            for n in nodes:
                await n.wait_for_leader(15.0)
            assert await nodes[0].command(b"incr") == b"1"
            assert await nodes[1].command(b"add 41") == b"42"
            assert await nodes[2].query(b"get") == b"42"
            with pytest.raises(CommandRejected):
                await nodes[2].command(b"garbage")  # refused by validate, never logged
            assert await nodes[0].query(b"get") == b"42"
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(main())


def test_submit_returns_futures_of_values_and_of_exceptions(tmp_path: Path) -> None:
    """The future API: ``node.submit(data)`` and ``obj.method.submit(...)`` resolve to
    the result (decoded for an object's method), a command's own exception, or a
    refusal; the awaitable API and the future API share sessions and the log."""

    def objects() -> dict[str, Replicated]:
        return {"c": Counter(), "d": ReplicatedDict()}

    async def main() -> None:
        async with cluster(tmp_path, objects) as (nodes, hosted):
            counter, d = hosted[0]["c"], hosted[2]["d"]
            assert isinstance(counter, Counter) and isinstance(d, ReplicatedDict)
            futures = [counter.incr.submit() for _ in range(50)]  # one pass, one batch
            values = await asyncio.gather(*futures)
            assert sorted(values) == list(range(1, 51))
            assert await counter.incr(10) == 60
            raw = await nodes[1].submit(encode_call(counter.incr, 2))
            assert decode_result(raw) == 62
            assert await d.set.submit("k", "v") is None  # through a follower
            with pytest.raises(OverflowError):
                await counter.incr.submit(2**63 - 1)  # the body's exception, raised again
            with pytest.raises(ReplicatedError, match="Refused"):  # by validate
                await nodes[0].submit(b"\x93\xa1z\xa1f\x90", decode=decode_result)
            with pytest.raises(TypeError, match="@query"):
                counter.get.submit()
            assert counter.incr is counter.incr  # made once per object and method
            assert await counter.get() == 62

    asyncio.run(main())


def test_a_call_without_an_answer_is_retried_after_attempt_timeout(tmp_path: Path) -> None:
    """The hot path keeps no timer per call: the sweep finds a call whose attempt had
    no answer for ``attempt_timeout`` and hands it to the engine, which submits it
    again with the same ``(client, seq)``; the counter counts it once."""

    def objects() -> dict[str, Replicated]:
        return {"c": Counter()}

    async def main() -> None:
        async with cluster(tmp_path, objects) as (nodes, hosted):
            node = nodes[0]
            node.attempt_timeout = 0.2
            counter = hosted[0]["c"]
            assert isinstance(counter, Counter)
            real = node.server.submit
            dropped: list[int] = []

            def lossy(requests: list[Any]) -> None:
                if not dropped:  # the first batch is lost on its way
                    dropped.append(len(requests))
                    return
                real(requests)

            node.server.submit = lossy  # type: ignore[method-assign]
            futures = [counter.incr.submit() for _ in range(3)]
            assert sorted(await asyncio.gather(*futures)) == [1, 2, 3]
            assert dropped == [3]
            assert await counter.get() == 3
            assert not node._calls and not node._pending

    asyncio.run(main())


def test_calls_outstanding_keep_few_objects_alive(tmp_path: Path) -> None:
    """What made thousands of outstanding calls slow: every call kept a chain of
    coroutines, a task and a timer alive, which Python's cyclic garbage collector
    walked again and again. A call submitted with ``submit`` keeps its future alive
    (its session is its record); an awaited call adds the caller's own coroutine and
    task."""
    import gc

    def objects() -> dict[str, Replicated]:
        return {"c": Counter()}

    async def main() -> None:
        async with cluster(tmp_path, objects) as (_nodes, hosted):
            counter = hosted[0]["c"]
            assert isinstance(counter, Counter)
            await counter.incr()  # sessions, decoders and bound methods exist now
            n = 2000
            for kind in ("submit", "await"):
                gc.collect()
                gc.disable()
                try:
                    before = len(gc.get_objects())
                    if kind == "submit":
                        futures = [counter.incr.submit() for _ in range(n)]
                    else:
                        futures = [asyncio.ensure_future(counter.incr()) for _ in range(n)]
                        await asyncio.sleep(0)  # each task runs up to its wait
                    alive = (len(gc.get_objects()) - before) / n
                finally:
                    gc.enable()
                await asyncio.gather(*futures)
                # Now 2 and 7 (the future, and a session: the pool grows to the most
                # calls ever outstanding, then they are reused); it was 30 per awaited
                # call (a coroutine per layer, a closure per attempt, a timer).
                limit = 3 if kind == "submit" else 9
                assert alive <= limit, f"{kind}: {alive:.1f} objects alive per call"

    asyncio.run(main())
