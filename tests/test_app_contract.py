"""The application contract: any object with apply/query/snapshot/restore is replicated.

A 15-line counter in this file runs in the replication layer (batches, exactly-once
sessions, one snapshot blob, a digest over both) and on an in-process 3-node cluster;
``examples/counter.py``, written outside the package, runs on 3 real ``pyxos serve``
processes and survives SIGKILL of its leader with every acknowledged increment applied
exactly once. The configuration refuses a bad ``app`` path with a clear error.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyxos.cli import main as pyxos_cli
from pyxos.client import AsyncClient, CommandRejected, NotKeyValue, OutcomeUnknown
from pyxos.localcluster import LocalCluster
from pyxos.server.config import Config, ConfigError
from pyxos.statemachine import Application, ReplicatedApp, load_factory
from pyxos.statemachine.replicated import decode_batch, encode_batch
from test_server_harness import (
    client_addresses,
    cluster_configs,
    start_nodes,
    stop_nodes,
    wait_for,
    wait_leader,
)

ROOT = Path(__file__).resolve().parent.parent


class TinyCounter:  # the contract in 15 lines: no pyxos import at all
    def __init__(self) -> None:
        self.n = 0

    def apply(self, command: bytes) -> bytes:
        self.n += int(command)
        return str(self.n).encode()

    def query(self, q: bytes) -> bytes:
        return str(self.n).encode()

    def snapshot(self) -> bytes:
        return str(self.n).encode()

    def restore(self, data: bytes) -> None:
        self.n = int(data)


def test_the_tiny_counter_satisfies_the_contract() -> None:
    assert isinstance(TinyCounter(), Application)


def test_batches_retries_and_stale_requests_in_the_layer() -> None:
    s = ReplicatedApp(TinyCounter())
    applied = s.apply(0, encode_batch([(7, 1, b"5"), (8, 1, b"2"), (7, 1, b"5")]))
    assert [(a.client, a.seq, a.result, a.error) for a in applied] == [
        (7, 1, b"5", None),
        (8, 1, b"7", None),
        (7, 1, b"5", None),  # the retry in the same batch: the stored answer
    ]
    [retry] = s.apply(1, encode_batch([(8, 1, b"2")]))  # a retry in a later slot
    assert (retry.result, s.app.n) == (b"7", 7)
    [stale] = s.apply(2, encode_batch([(7, 0, b"100")]))
    assert stale.error is not None and "stale" in stale.error and s.app.n == 7


def test_an_exception_in_apply_is_that_commands_answer_and_is_remembered() -> None:
    s = ReplicatedApp(TinyCounter())
    [bad] = s.apply(0, encode_batch([(1, 1, b"x")]))
    assert bad.error is not None and bad.error.startswith("apply raised ValueError")
    [again] = s.apply(1, encode_batch([(1, 1, b"x")]))
    assert again == bad
    [good] = s.apply(2, encode_batch([(1, 2, b"3")]))
    assert good.result == b"3"


class Abort(BaseException):
    """Raised by an application's own code: not an ``Exception``."""


class Raising(TinyCounter):
    """Commands: a decimal to add, ``abort`` (a BaseException of its own), ``cancel``
    (``asyncio.CancelledError``), ``interrupt`` (``KeyboardInterrupt``), ``exit``."""

    def apply(self, command: bytes) -> bytes:
        if command == b"abort":
            raise Abort("gave up")
        if command == b"cancel":
            raise asyncio.CancelledError()
        if command == b"interrupt":
            raise KeyboardInterrupt
        if command == b"exit":
            raise SystemExit(3)
        return super().apply(command)

    def query(self, q: bytes) -> bytes:
        if q == b"abort":
            raise Abort("no answer")
        if q == b"interrupt":
            raise KeyboardInterrupt
        return super().query(q)


def test_a_base_exception_of_the_application_is_that_commands_answer() -> None:
    """One that escaped would crash every replica at the same slot, and again at every
    restart (the slot is in the log): it is answered like any exception."""
    s = ReplicatedApp(Raising())
    applied = s.apply(0, encode_batch([(1, 1, b"2"), (2, 1, b"abort"), (3, 1, b"cancel")]))
    assert [a.error for a in applied] == [
        None,
        "apply raised Abort: gave up",
        "apply raised CancelledError: ",
    ]
    assert s.app.n == 2 and s.session(2) == (1, b"")
    [again] = s.apply(1, encode_batch([(2, 1, b"abort")]))  # the retry: the stored answer
    assert again == applied[1]
    assert s.query(b"abort").error == "query raised Abort: no answer"
    assert s.apply(2, encode_batch([(1, 2, b"3")]))[0].result == b"5"


@pytest.mark.parametrize(
    ("command", "exit_type"), [(b"interrupt", KeyboardInterrupt), (b"exit", SystemExit)]
)
def test_a_process_exit_inside_apply_propagates_and_the_state_applies_no_more(
    command: bytes, exit_type: type[BaseException]
) -> None:
    """Ctrl-C lands wherever the process is: recorded as the command's answer, it would
    be this replica's answer only. It stops the node; the state it cut short refuses
    to go on (the node restarts from its snapshot and log)."""
    s = ReplicatedApp(Raising())
    with pytest.raises(exit_type):
        s.apply(0, encode_batch([(1, 1, b"2"), (2, 1, command), (3, 1, b"4")]))
    with pytest.raises(RuntimeError, match="cut short by"):
        s.apply(1, encode_batch([(1, 2, b"1")]))
    with pytest.raises(KeyboardInterrupt):
        ReplicatedApp(Raising()).query(b"interrupt")


def test_one_snapshot_blob_holds_the_sessions_and_the_application() -> None:
    s = ReplicatedApp(TinyCounter())
    s.apply(0, encode_batch([(1, 1, b"4"), (2, 1, b"1")]))
    t = ReplicatedApp(TinyCounter())
    t.restore(s.snapshot())
    assert (t.applied_slot, t.app.n, t.session(1), t.session(2)) == (1, 5, (1, b"4"), (1, b"5"))
    # The restored sessions still deduplicate: a retry after a restore is not applied.
    [retry] = t.apply(1, encode_batch([(1, 1, b"4")]))
    assert (retry.result, t.app.n) == (b"4", 5)
    with pytest.raises(ValueError, match="not a pyxos snapshot"):
        t.restore(b"garbage")
    assert t.app.n == 5


def test_the_digest_covers_the_sessions_and_the_application() -> None:
    a, b = ReplicatedApp(TinyCounter()), ReplicatedApp(TinyCounter())
    a.track_digest()
    a.apply(0, encode_batch([(1, 1, b"2")]))
    b.apply(0, encode_batch([(2, 1, b"2")]))  # same value, another client's session
    assert a.app.n == b.app.n and a.state_digest() != b.state_digest()
    c = ReplicatedApp(TinyCounter())
    c.apply(0, encode_batch([(1, 1, b"3")]))  # same client and seq, another value
    assert a.state_digest() != c.state_digest()
    d = ReplicatedApp(TinyCounter())
    d.apply(0, encode_batch([(1, 1, b"2")]))
    assert a.state_digest() == d.state_digest()  # tracked equals computed


class _Unencoded:
    """Returns ``str`` where the contract says ``bytes`` (forgot ``.encode()``)."""

    def __init__(self) -> None:
        self.n = 0

    def apply(self, command: bytes) -> bytes:
        self.n += 1
        return str(self.n)  # type: ignore[return-value]

    def query(self, q: bytes) -> bytes:
        return self.n  # type: ignore[return-value]

    def snapshot(self) -> bytes:
        return str(self.n)  # type: ignore[return-value]

    def restore(self, data: bytes) -> None:
        self.n = int(data)

    def reject(self, error: str) -> bytes:
        return error  # type: ignore[return-value]


def test_results_that_are_not_bytes_never_reach_the_session_table_or_a_snapshot() -> None:
    # Before: the str result was kept in the session table, the snapshot encoded, and
    # restoring it failed ("Expected `bytes`, got `str`"): a replica that restarted from
    # it, or a follower sent it, could not come back.
    state = ReplicatedApp(_Unencoded())
    (done,) = state.apply(0, encode_batch([(1, 1, b"x")]))
    assert done.error is not None and "apply returned str, not bytes" in done.error
    assert isinstance(done.result, bytes)  # reject's str is refused too: no result bytes
    assert "reject returned str" in done.error
    q = state.query(b"q")
    assert q.error is not None and "query returned int, not bytes" in q.error
    assert type(q.result) is bytes
    with pytest.raises(TypeError, match=r"snapshot\(\) returned str, not bytes"):
        state.snapshot()
    state.app.snapshot = lambda: b"1"  # type: ignore[method-assign]
    again = ReplicatedApp(_Unencoded())
    again.restore(state.snapshot())  # the session table holds only bytes: it restores
    assert again.session(1) == (1, b"")


def test_a_batch_carries_opaque_bytes() -> None:
    value = encode_batch([(1, 2, b"\x00\xff")])
    assert decode_batch(value) == [(1, 2, b"\x00\xff")]


def test_bad_app_paths_are_configuration_errors(tmp_path: Path) -> None:
    [config] = cluster_configs(tmp_path, 1)
    raw = {
        "cluster_id": config.cluster_id,
        "node_id": 1,
        "peers": {"1": "127.0.0.1:7001"},
        "client_port": 0,
        "data_dir": str(tmp_path),
    }
    for app, message in [
        ("nocolon", "expected 'module:Factory'"),
        ("no_such_module_xyz:App", "cannot import module 'no_such_module_xyz'"),
        ("json:NoSuchThing", "module 'json' has no 'NoSuchThing'"),
        ("json:JSONDecoder", "not an application: it has no apply, query, snapshot, restore"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Config.from_mapping({**raw, "app": app})
    assert Config.from_mapping(raw).app == "pyxos.statemachine.kv:KVStore"
    assert load_factory("test_app_contract:TinyCounter") is TinyCounter


def test_serve_with_a_bad_app_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    [config] = cluster_configs(tmp_path, 1)
    path = tmp_path / "node.toml"
    path.write_text(
        f'cluster_id = "c"\nnode_id = 1\nclient_port = 0\ndata_dir = "{tmp_path}/d"\n'
        f'[peers]\n1 = "127.0.0.1:{config.peer_port}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "pyxos.server", "--config", str(path), "--app", "nope:Nope"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "configuration error: app 'nope:Nope': cannot import module 'nope'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_tiny_counter_on_an_in_process_cluster(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, app="test_app_contract:TinyCounter")
        nodes = await start_nodes(configs)
        try:
            await wait_leader(nodes)
            async with AsyncClient(client_addresses(configs), cluster=configs[0].cluster_id) as c:
                results = [await c.command(b"2") for _ in range(5)]
                assert results == [b"2", b"4", b"6", b"8", b"10"]
                assert await c.query(b"") == b"10"
                with pytest.raises(CommandRejected, match="apply raised ValueError"):
                    await c.command(b"not a number")
                assert await c.query(b"") == b"10"
            # Through a follower, which forwards to the leader and relays the answer:
            # the refusal arrives as a refusal, not as an empty result.
            follower = next(c for n, c in zip(nodes, configs, strict=True) if not n.is_leader)
            async with AsyncClient(
                [f"127.0.0.1:{follower.client_port}"], cluster=follower.cluster_id
            ) as c:
                with pytest.raises(CommandRejected, match="apply raised ValueError"):
                    await c.command(b"x")
                assert await c.command(b"1") == b"11"
            await wait_for(
                lambda: all(n.node is not None and n.node.app.n == 11 for n in nodes),
                what="every replica applied every increment",
            )
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_the_kv_client_pointed_at_another_application_says_so(tmp_path: Path) -> None:
    """The key-value client against the counter: a clear error naming the mistake, not
    a msgpack decode error; a refused put is no event of the history (no effect), an
    answered get an unknown one; the counter is untouched and keeps serving."""

    async def main() -> None:
        configs = cluster_configs(tmp_path, app="test_app_contract:TinyCounter")
        nodes = await start_nodes(configs)
        try:
            await wait_leader(nodes)
            history: list[dict[str, object]] = []
            async with AsyncClient(
                client_addresses(configs), cluster=configs[0].cluster_id, history=history.append
            ) as c:
                assert await c.command(b"3") == b"3"
                with pytest.raises(NotKeyValue, match="another application") as refused:
                    await c.put("k", "v")  # the counter's apply raises: a refusal
                assert refused.value.refused
                assert "put 'k' was refused: apply raised ValueError" in str(refused.value)
                with pytest.raises(NotKeyValue, match="another application") as answered:
                    await c.get("k")  # the counter's query answers its value
                assert not answered.value.refused
                assert "get 'k' was answered with b'3'" in str(answered.value)
                assert await c.query(b"") == b"3"
            assert [(h["op"], h["ok"]) for h in history] == [("get", None)]
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def _http(url: str, body: object) -> tuple[int, object]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_example_counter_survives_sigkill_of_its_leader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/counter.py on 3 real `pyxos serve` processes: concurrent clients
    increment through a SIGKILL of the leader; every acknowledged increment is applied
    exactly once (each answer is a distinct value; the final value lies between the
    acknowledged count and that plus the outcomes unknown)."""
    monkeypatch.chdir(ROOT)  # the nodes import examples.counter from where they start
    cluster = LocalCluster.create(
        tmp_path / "c", 3, app="examples.counter:Counter", election_timeout=(0.15, 0.3)
    )
    cluster.start()
    try:
        leader = cluster.wait_for_leader(20.0)
        assert leader is not None
        answers: list[int] = []
        unknown = 0
        killed = asyncio.Event()

        async def worker(c: AsyncClient, count: int) -> None:
            nonlocal unknown
            for i in range(count):
                try:
                    answers.append(int(await c.command(b"incr")))
                except OutcomeUnknown:
                    unknown += 1
                if i == count // 3:
                    await killed.wait()

        async def main() -> int:
            addresses = cluster.client_addresses()
            clients = [
                AsyncClient(addresses, cluster=cluster.cluster_id, timeout=10.0) for _ in range(4)
            ]
            try:
                with pytest.raises(CommandRejected, match="not a counter command"):
                    await clients[0].command(b"rm -rf /")
                tasks = [asyncio.create_task(worker(c, 30)) for c in clients]
                await wait_for(lambda: len(answers) >= 20, 20.0, "the first increments")
                cluster.kill(leader)  # SIGKILL, with increments in flight
                killed.set()
                await asyncio.gather(*tasks)
                return int(await clients[0].query(b"get"))
            finally:
                for c in clients:
                    await c.close()

        final = asyncio.run(main())
        acked = len(answers)
        assert len(set(answers)) == acked, "two increments returned the same value"
        assert acked + unknown == 4 * 30
        assert acked <= final <= acked + unknown, (acked, unknown, final)
        # The HTTP endpoints of an application with a JSON codec.
        node = next(n for n in cluster.nodes.values() if n.node_id != leader)
        status, body = _http(f"{node.http_url}/v1/app/command", {"add": 5})
        assert (status, body) == (200, {"result": final + 5})
        assert _http(f"{node.http_url}/v1/app/query", "value") == (200, {"result": final + 5})
        status, body = _http(f"{node.http_url}/v1/app/command", {"sub": 1})
        assert status == 400 and "error" in body  # type: ignore[operator]
        try:
            urllib.request.urlopen(f"{node.http_url}/v1/kv/x", timeout=10)
            raise AssertionError("the KV endpoints answered for the counter")
        except urllib.error.HTTPError as e:
            assert e.code == 404 and "not the KV store" in json.loads(e.read())["error"]
        # The command line, for any application.
        dir_ = str(tmp_path / "c")
        out = CliRunner().invoke(pyxos_cli, ["app", "--dir", dir_, "command", "add 2"])
        assert (out.exit_code, out.output) == (0, f"{final + 7}\n"), out.output
        out = CliRunner().invoke(pyxos_cli, ["app", "--dir", dir_, "query", "get"])
        assert (out.exit_code, out.output) == (0, f"{final + 7}\n"), out.output
        out = CliRunner().invoke(pyxos_cli, ["app", "--dir", dir_, "command", "nonsense"])
        assert out.exit_code == 1 and "not a counter command" in out.output
        # The killed node comes back and catches up: every node applies the same slots.
        cluster.start_node(leader)

        def caught_up() -> bool:
            applied = [(s or {}).get("applied") for s in cluster.status().values()]
            return applied[0] is not None and len(set(applied)) == 1

        cluster.wait_until(caught_up, 30.0, "the restarted node caught up")
    finally:
        cluster.stop()
        if os.environ.get("PYXOS_KEEP_LOGS"):
            print(*(p.read_text() for p in (tmp_path / "c").glob("*.log")))


class BoolValidate:
    """``validate`` returns a bool (True meaning "valid" to its author), not the
    contract's ``str | None``."""

    def __init__(self) -> None:
        self.n = 0

    def validate(self, command: bytes) -> bool:
        return command == b"ok"

    def apply(self, command: bytes) -> bytes:
        self.n += 1
        return b"%d" % self.n

    def query(self, q: bytes) -> bytes:
        return b"%d" % self.n

    def snapshot(self) -> bytes:
        return b"%d" % self.n

    def restore(self, data: bytes) -> None:
        self.n = int(data)


def test_a_validate_that_returns_no_str_is_a_clear_refusal(tmp_path: Path) -> None:
    """Before: the bool went into ``ClientReply.error``; no client or peer could decode
    the frame ("Expected `str | null`, got `bool`"), every link that carried it was
    closed, and the caller got ``OutcomeUnknown`` after its timeout. Now: a refusal
    naming the mistake, directly and through a follower; nothing applied."""

    async def main() -> None:
        configs = cluster_configs(tmp_path, app="test_app_contract:BoolValidate")
        nodes = await start_nodes(configs)
        try:
            await wait_leader(nodes)
            for node, config in zip(nodes, configs, strict=True):
                address = [f"127.0.0.1:{config.client_port}"]
                async with AsyncClient(address, cluster=config.cluster_id, timeout=5.0) as c:
                    for command in (b"ok", b"bad"):
                        with pytest.raises(CommandRejected, match="validate returned bool"):
                            await c.command(command)
                    assert await c.query(b"") == b"0", node.config.node_id
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
