"""One command at a time per logical client (``KVOperations``' turn): concurrent calls
on one client run in order with consecutive seqs, and a caller cancelled while waiting
for its turn, or right after being handed it, never wedges the client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from pyxos.client.aio import KVOperations
from pyxos.core.messages import ClientReply
from pyxos.statemachine.kv import Command, Result, encode_result


class Scripted(KVOperations):
    """A client whose every ``_call`` waits for the test to answer it."""

    def __init__(self) -> None:
        self.client_id = 9
        self.seq = 0
        self.history = None
        self.calls: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def closed(self) -> bool:
        return False

    async def _call(
        self, seq: int, payload: bytes, command: Command | None, query: bool = False
    ) -> ClientReply:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls.append((seq, gate))
        await gate
        return ClientReply(1, self.client_id, seq, True, encode_result(Result(ok=True)))


async def until(cond: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``cond()`` holds (a bounded number of passes)."""
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


def test_concurrent_commands_take_turns_in_order() -> None:
    async def main() -> None:
        c = Scripted()
        tasks = [asyncio.create_task(c.put(f"k{i}", "v")) for i in range(4)]

        def calls(n: int) -> Callable[[], bool]:
            return lambda: len(c.calls) == n

        for expected in range(1, 5):
            await until(calls(expected), f"call {expected}")
            for _ in range(5):
                await asyncio.sleep(0)
            assert len(c.calls) == expected  # the next waits for this one's answer
            seq, gate = c.calls[-1]
            assert seq == expected
            gate.set_result(None)
        await asyncio.gather(*tasks)
        assert not c._busy

    asyncio.run(main())


@pytest.mark.parametrize("when", ["waiting", "in_line", "handed"])
def test_a_cancelled_waiter_passes_the_turn_on(when: str) -> None:
    async def main() -> None:
        c = Scripted()
        first = asyncio.create_task(c.put("a", "v"))
        await until(lambda: len(c.calls) == 1, "first call")
        second = asyncio.create_task(c.put("b", "v"))
        third = asyncio.create_task(c.put("c", "v"))
        for _ in range(5):
            await asyncio.sleep(0)
        if when == "waiting":
            second.cancel()
            c.calls[0][1].set_result(None)
        elif when == "in_line":  # cancelled while ``first`` is already due to resume:
            # ``first`` gives the turn back with ``second``'s cancelled future still queued
            c.calls[0][1].set_result(None)
            second.cancel()
        else:  # the turn goes to ``second``, which is cancelled before it resumes
            c.calls[0][1].set_result(None)
            await until(lambda: first.done(), "first done")
            second.cancel()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        await until(lambda: len(c.calls) == 2, "third's call")
        assert c.calls[1][0] == 2  # the cancelled one never took a seq
        c.calls[1][1].set_result(None)
        await third
        assert not c._busy and not c._turns

    asyncio.run(main())


def test_a_cancelled_command_frees_the_turn() -> None:
    async def main() -> None:
        c = Scripted()
        first = asyncio.create_task(c.put("a", "v"))
        await until(lambda: len(c.calls) == 1, "first call")
        second = asyncio.create_task(c.get("b"))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await until(lambda: len(c.calls) == 2, "second's call")
        c.calls[1][1].set_result(None)
        assert await second is None
        assert not c._busy

    asyncio.run(main())


@pytest.mark.parametrize("seed", range(20))
def test_many_waiters_cancelled_at_random_points_stay_serialized(seed: int) -> None:
    """Dozens of commands on one client, some cancelled or timed out at random points
    (queued, handed the turn, in flight): never two in flight, seqs consecutive, every
    survivor answered, the turn free at the end."""
    import random

    rng = random.Random(seed)

    async def main() -> None:
        c = Scripted()
        tasks = [asyncio.create_task(c.put(f"k{i}", "v")) for i in range(30)]
        tasks += [
            asyncio.create_task(asyncio.wait_for(c.put(f"t{i}", "v"), rng.random() / 1000))
            for i in range(5)
        ]
        answered = 0
        for _ in range(2000):
            if all(t.done() for t in tasks):
                break
            open_calls = [g for _, g in c.calls if not g.done()]
            assert len(open_calls) <= 1, "two commands of one client in flight"
            r = rng.random()
            if r < 0.15:
                live = [t for t in tasks if not t.done()]
                if live:
                    rng.choice(live).cancel()
            elif r < 0.6 and open_calls:
                open_calls[0].set_result(None)
                answered += 1
            await asyncio.sleep(0)
        else:
            raise AssertionError(f"hung: {sum(not t.done() for t in tasks)} commands open")
        await asyncio.gather(*tasks, return_exceptions=True)
        assert [s for s, _ in c.calls] == list(range(1, len(c.calls) + 1))
        assert not c._busy and not c._turns

    asyncio.run(main())
