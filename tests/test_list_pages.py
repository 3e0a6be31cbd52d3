"""``list`` is paginated (issue 8, item 5): a limit and a start-after key, as etcd's range
does; the answer says when more entries follow, and nothing is cut off silently."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from pyxos.cli import main
from pyxos.client import AsyncClient, Client, ClientPool
from pyxos.statemachine.kv import (
    MAX_LIST_BYTES,
    MAX_LIST_ENTRIES,
    Command,
    KVStore,
    Result,
    decode_result,
    encode_batch,
    validate_command,
)
from pyxos.statemachine.replicated import ReplicatedApp
from test_server_harness import (
    CLUSTER,
    client_addresses,
    cluster_configs,
    start_nodes,
    stop_nodes,
    wait_leader,
)


def _store(keys: list[str], value: str = "v") -> ReplicatedApp[KVStore]:
    s = ReplicatedApp(KVStore())
    commands = [Command(i + 1, 1, "put", k, value) for i, k in enumerate(keys)]
    s.apply(0, encode_batch(commands))
    return s


def _list(
    s: ReplicatedApp[KVStore], prefix: str, limit: int = 0, after: str | None = None
) -> Result:
    cmd = Command(10**9, s.applied_slot + 1, "list", prefix, limit=limit, after=after)
    validate_command(cmd)
    (applied,) = s.apply(s.applied_slot, encode_batch([cmd]))
    return decode_result(applied.result)


# --- the state machine --------------------------------------------------------------------


def test_a_list_beyond_the_largest_page_says_there_is_more() -> None:
    n = MAX_LIST_ENTRIES + 5
    s = _store([f"k{i:06d}" for i in reversed(range(n))])
    first = _list(s, "k")
    assert first.values == [(f"k{i:06d}", "v") for i in range(MAX_LIST_ENTRIES)]
    assert first.more is True
    rest = _list(s, "k", after=f"k{MAX_LIST_ENTRIES - 1:06d}")
    assert rest.values == [(f"k{i:06d}", "v") for i in range(MAX_LIST_ENTRIES, n)]
    assert rest.more is False


def test_pages_walk_every_key_with_the_prefix_once_in_order() -> None:
    keys = [f"a/{i:03d}" for i in range(23)] + ["a", "b/1", "a/", "0"]
    s = _store(keys)
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = _list(s, "a/", limit=5, after=after)
        assert page.values is not None
        pages += 1
        seen += [k for k, _ in page.values]
        if not page.more:
            break
        after = page.values[-1][0]
    assert seen == sorted(k for k in keys if k.startswith("a/"))
    assert pages == 5  # 24 keys in pages of 5: the last one is not empty and says no more
    # A limit equal to what is left: no more, and no empty page to ask for.
    assert _list(s, "a/", limit=24).more is False
    assert _list(s, "a/", limit=23).more is True
    assert _list(s, "zz", limit=3) == Result(ok=True, values=[], more=False)


def test_a_page_of_large_values_stops_at_the_byte_bound_but_never_empty() -> None:
    big = "x" * (MAX_LIST_BYTES // 3 + 1)
    s = _store(["p1", "p2", "p3", "p4"], big)
    page = _list(s, "p", limit=100)
    assert page.values is not None and [k for k, _ in page.values] == ["p1", "p2"]
    assert page.more is True
    huge = ReplicatedApp(KVStore())
    huge.restore(s.snapshot())
    assert huge.app.list_page("p", 1, "p3") == ([("p4", big)], False)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (Command(1, 1, "list", "", limit=-1), "list: the limit is -1"),
        (Command(1, 1, "list", "", limit=MAX_LIST_ENTRIES + 1), "list: the limit is 10001"),
        (Command(1, 1, "list", "", after="k" * 2000), "start-after key is 2000 bytes"),
        (Command(1, 1, "get", "k", limit=3), "get: takes no limit or start-after key"),
        (Command(1, 1, "put", "k", "v", after="a"), "put: takes no limit"),
    ],
)
def test_bad_list_parameters_are_refused(command: Command, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_command(command)


# --- HTTP and the clients, against a real in-process cluster ------------------------------


def test_http_pages_and_client_iterators(tmp_path: Path) -> None:
    keys = [f"k/{i:02d}" for i in range(25)]

    async def main() -> None:
        configs = cluster_configs(tmp_path, http_port=0)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            follower = next(n for n in nodes if n is not leader)
            async with AsyncClient(client_addresses(configs), cluster=CLUSTER) as c:
                for k in keys:
                    await c.put(k, k.upper())
                await c.put("other", "x")

                # The client: one page, then an iterator over every page.
                page = await c.list_page("k/", limit=10)
                assert page.entries == [(k, k.upper()) for k in keys[:10]]
                assert page.more and page.next == "k/09"
                page = await c.list_page("k/", limit=10, after="k/19")
                assert page.entries == [(k, k.upper()) for k in keys[20:]]
                assert not page.more and page.next is None
                seq = c.seq
                walked = [e async for e in c.iter_list("k/", page_size=7)]
                assert walked == [(k, k.upper()) for k in keys]
                assert c.seq - seq == 4  # 7 + 7 + 7 + 4: four requests
                assert await c.list("") == sorted([(k, k.upper()) for k in keys] + [("other", "x")])
                with pytest.raises(ValueError):
                    await c.list_page("k/", limit=0)

            async with ClientPool(client_addresses(configs), cluster=CLUSTER) as pool:
                session = pool.session()
                walked = [e async for e in session.iter_list("k/", page_size=10)]
                assert walked == [(k, k.upper()) for k in keys]

            # HTTP, at the leader and through a follower (which forwards the read).
            async with aiohttp.ClientSession() as http:
                for node in (leader, follower):
                    base = f"http://127.0.0.1:{node.http_port}/v1/kv"
                    got: list[str] = []
                    params = {"prefix": "k/", "limit": "10"}
                    while True:
                        async with http.get(base, params=params) as r:
                            assert r.status == 200, await r.text()
                            body = await r.json()
                        got += [k for k, _ in body["entries"]]
                        if not body["more"]:
                            assert body["next"] is None
                            break
                        assert body["next"] == got[-1]
                        params["after"] = body["next"]
                    assert got == keys
                    async with http.get(base, params={"prefix": "k/", "stale": "true"}) as r:
                        body = await r.json()
                        assert body["stale"] is True and body["more"] is False
                        assert len(body["entries"]) == 25  # the default page is larger
                    for bad in ("0", "-1", "x", "10001", "1e3", "", "\u00b2", "\u0661\u0662", " 5"):
                        for stale in ("false", "true"):
                            params = {"prefix": "k/", "limit": bad, "stale": stale}
                            async with http.get(base, params=params) as r:
                                assert r.status == 400, (bad, stale)
                                assert "limit" in (await r.json())["error"]
                    async with http.get(base, params={"after": "a" * 2000}) as r:
                        assert r.status == 400
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_blocking_client_iterates_every_page(tmp_path: Path) -> None:
    configs = cluster_configs(tmp_path)
    up = threading.Event()
    stop = threading.Event()

    async def serve() -> None:
        nodes = await start_nodes(configs)
        try:
            await wait_leader(nodes)
            up.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)
        finally:
            await stop_nodes(nodes)

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert up.wait(10.0), "no leader"
        with Client(client_addresses(configs), cluster=CLUSTER) as c:
            for i in range(12):
                c.put(f"s{i:02d}", str(i))
            walked = list(c.iter_list("s", page_size=5))
            assert walked == [(f"s{i:02d}", str(i)) for i in range(12)]
            page = c.list_page("s", limit=5, after="s04")
            assert page.more and page.next == "s09"
            assert c.list("s") == walked
        # The CLI walks every page too.
        addr = ",".join(client_addresses(configs))
        args = ["kv", "--addr", addr, "--cluster", CLUSTER, "list", "s", "--page-size", "5"]
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, out.output
        assert out.output.splitlines() == [f"s{i:02d}={i}" for i in range(12)]
    finally:
        stop.set()
        thread.join()
