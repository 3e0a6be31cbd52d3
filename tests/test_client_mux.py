"""The multiplexing client (``ClientPool`` sessions) against in-process 3-node clusters."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from pyxos.check.history import parse_line
from pyxos.check.linearizability import check_history
from pyxos.client import (
    AsyncClient,
    ClientError,
    ClientPool,
    CommandRejected,
    OutcomeUnknown,
    Session,
)
from test_server_harness import (
    CLUSTER,
    client_addresses,
    cluster_configs,
    start_nodes,
    stop_nodes,
    wait_for,
    wait_leader,
)


def test_many_sessions_over_two_connections_all_complete(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            mapping = {c.node_id: f"127.0.0.1:{c.client_port}" for c in configs}
            async with ClientPool(mapping, cluster=CLUSTER, connections=2) as pool:
                sessions = [pool.session() for _ in range(40)]
                assert len({s.client_id for s in sessions}) == 40

                wins: list[int] = []

                async def work(i: int, s: Session) -> None:
                    key = f"k{i}"
                    assert await s.get(key) is None
                    for j in range(5):
                        await s.put(key, f"{i}.{j}")
                        assert await s.get(key) == f"{i}.{j}"
                    assert await s.cas(key, "wrong", "x") is False
                    assert await s.cas(key, f"{i}.4", "done") is True
                    if await s.cas("shared", None, str(i)):
                        wins.append(i)

                await asyncio.gather(*(work(i, s) for i, s in enumerate(sessions)))
                assert pool.pending == 0
                assert all(s.seq == 14 for s in sessions)
                assert sorted(await sessions[0].list("k")) == sorted(
                    (f"k{i}", "done") for i in range(40)
                )
                # Exactly one cas on "shared" won, and its value stayed.
                assert len(wins) == 1
                assert await sessions[1].get("shared") == str(wins[0])
                # Everything went over at most two connections per node, and to the
                # leader over at most two.
                assert pool.connects <= 2 * len(nodes)
                assert leader.stats.client_connections <= 2
                assert all(s.leader == leader.config.node_id for s in sessions)
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_follower_first_then_straight_to_the_leader(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, forward_requests=False)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            addresses = client_addresses(configs)
            i = nodes.index(leader)
            addresses = addresses[i + 1 :] + addresses[: i + 1]  # a follower first
            async with ClientPool(addresses, cluster=CLUSTER, connections=2) as pool:
                first = pool.session()
                await first.put("a", "1")
                assert first.retries >= 1  # redirected
                assert first.answered_by == leader.config.node_id
                # The pool learned the leader: a new session goes straight there.
                second = pool.session()
                assert await second.get("a") == "1"
                assert second.retries == 0
                with pytest.raises(CommandRejected, match="key is empty"):
                    await second.put("", "x")
                assert await second.get("a") == "1"  # the session continues
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_retry_with_the_same_seq_applies_once(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        try:
            await wait_leader(nodes)
            async with ClientPool(client_addresses(configs), cluster=CLUSTER) as pool:
                s = pool.session()
                await s.put("n", "1")
                assert await s.cas("n", "1", "2") is True
                # Resend the cas with the same (client_id, seq): applied again it would
                # fail (n is "2" now); answered from the session table it succeeds.
                s.seq -= 1
                assert await s.cas("n", "1", "2") is True
                # The same (client, seq) from a second pool (another connection): once.
                async with ClientPool(client_addresses(configs), cluster=CLUSTER) as other:
                    twin = other.session(s.client_id)
                    twin.seq = s.seq - 1
                    assert await twin.cas("n", "1", "2") is True
                assert await s.get("n") == "2"
                with pytest.raises(ValueError, match="already a session"):
                    pool.session(s.client_id)
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


KEYS = ("a", "b")


async def _workload(s: Session, rng: random.Random, stop: asyncio.Event, done: list[int]) -> None:
    """Random get/put/cas/delete on two keys until ``stop``; count completions."""
    index = len(done)
    done.append(0)
    while not stop.is_set():
        key = rng.choice(KEYS)
        value = f"{s.client_id % 1000}-{s.seq + 1}"
        op = rng.choice(("get", "get", "put", "cas", "delete"))
        try:
            if op == "get":
                await s.get(key)
            elif op == "put":
                await s.put(key, value)
            elif op == "cas":
                await s.cas(key, rng.choice((None, f"{s.client_id % 1000}-{s.seq}")), value)
            else:
                await s.delete(key)
            done[index] += 1
        except (OutcomeUnknown, CommandRejected):
            pass


def test_killing_the_leader_sessions_recover_and_stay_linearizable(tmp_path: Path) -> None:
    records: list[dict[str, object]] = []

    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        stop = asyncio.Event()
        pool = ClientPool(
            client_addresses(configs),
            cluster=CLUSTER,
            connections=2,
            timeout=2.0,
            attempt_timeout=0.3,
            history=records.append,
        )
        done: list[int] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            leader = await wait_leader(nodes)
            sessions = [pool.session() for _ in range(8)]
            tasks = [
                asyncio.create_task(_workload(s, random.Random(i), stop, done))
                for i, s in enumerate(sessions)
            ]
            await wait_for(lambda: len(done) == 8 and min(done) >= 5, 5.0, "load before")
            await leader.shutdown()
            before = list(done)
            killed_at = time.monotonic()
            await wait_for(
                lambda: all(d >= b + 5 for d, b in zip(done, before, strict=True)),
                5.0,
                "every session to complete commands after the leader died",
            )
            assert time.monotonic() - killed_at < 5.0
            assert all(s.answered_by != leader.config.node_id for s in sessions)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pool.close()
            await stop_nodes(nodes)

    asyncio.run(main())
    assert len(records) > 80
    ops = [parse_line(json.dumps(r)) for r in records]
    verdict = check_history(ops, timeout_s=30.0)
    assert verdict.ok, verdict.describe()


def test_no_quorum_means_outcome_unknown_within_the_timeout(tmp_path: Path) -> None:
    records: list[dict[str, object]] = []

    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            async with ClientPool(
                client_addresses(configs),
                cluster=CLUSTER,
                connections=2,
                timeout=1.0,
                attempt_timeout=0.3,
                history=records.append,
            ) as pool:
                sessions = [pool.session() for _ in range(6)]
                await asyncio.gather(*(s.put(f"x{i}", "1") for i, s in enumerate(sessions)))
                for node in nodes:
                    if node is not leader:
                        await node.shutdown()
                started = time.monotonic()
                outcomes = await asyncio.gather(
                    *(s.put(f"x{i}", "2") for i, s in enumerate(sessions)),
                    return_exceptions=True,
                )
                elapsed = time.monotonic() - started
                assert all(isinstance(o, OutcomeUnknown) for o in outcomes), outcomes
                assert elapsed < 1.0 + 0.3, f"OutcomeUnknown after {elapsed:.2f} s"
                assert pool.pending == 0
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
    unknown = [r for r in records if r["return"] is None]
    assert len(unknown) == 6 and all(r["ok"] is None for r in unknown)


def test_nothing_listening_means_outcome_unknown_and_close_refuses(tmp_path: Path) -> None:
    async def main() -> None:
        (config,) = cluster_configs(tmp_path, 1)  # never started
        pool = ClientPool(
            client_addresses([config]), cluster=CLUSTER, timeout=0.5, attempt_timeout=0.2
        )
        s = pool.session()
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown):
            await s.get("x")
        assert time.monotonic() - started < 0.5 + 0.3
        await pool.close()
        with pytest.raises(ClientError, match="closed"):
            await s.get("x")
        with pytest.raises(ClientError, match="closed"):
            pool.session()

    asyncio.run(main())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        ClientPool([])
    with pytest.raises(ValueError):
        ClientPool(["127.0.0.1:1"], connections=0)
    with pytest.raises(ValueError):
        ClientPool(["127.0.0.1:1"]).session(0)


@pytest.mark.parametrize("kind", ["pool", "async"])
def test_a_call_cancelled_in_flight_is_in_the_history_as_unknown(tmp_path: Path, kind: str) -> None:
    # The history holds every call: one abandoned mid-flight (its task cancelled, as a
    # harness does at the end of a run) may have taken effect, so it is recorded with
    # an unknown outcome instead of vanishing.
    records: list[dict[str, object]] = []

    async def main() -> None:
        (config,) = cluster_configs(tmp_path, 1)  # never started: no answer ever comes
        addresses = client_addresses([config])
        client: ClientPool | AsyncClient
        if kind == "pool":
            client = ClientPool(addresses, cluster=CLUSTER, timeout=60.0, history=records.append)
            target = client.session()
        else:
            client = AsyncClient(addresses, cluster=CLUSTER, timeout=60.0, history=records.append)
            target = client
        task = asyncio.create_task(target.put("x", "1"))
        await wait_for(lambda: target.seq == 1, 5.0, "the call to start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()

    asyncio.run(main())
    assert len(records) == 1
    op = parse_line(json.dumps(records[0]))
    assert op.op == "put" and op.return_ is None and op.ok is None
