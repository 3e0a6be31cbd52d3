"""Adversarial review of issue 8, item 1: a Decided lost in the middle of a streamed
fetch reply must be asked for again, even while later replies keep arriving.

Scenario (core level, no simulator): follower 2 is far behind; node 1 knows every
chosen slot and keeps choosing more (a cluster under write load). Follower 2 fetches;
the reply streams in Decided messages and one of them is lost. Every later Decided
pushes the fetch timeout forward and pipelines the next Fetch from where the *reply*
ends, never from the follower's first unchosen slot: while the writes go on, the hole
is never asked for again and the follower applies nothing more.
"""

from __future__ import annotations

import random

from pyxos.core.ballot import Ballot
from pyxos.core.messages import Commit, Decided, Fetch, Message
from pyxos.core.quorum import Majority
from pyxos.core.replica import Replica

Q3 = Majority([1, 2, 3])
B = Ballot(1, 1)


def _learn(r: Replica, start: int, count: int) -> None:
    r.step(Decided(3, start, tuple(b"v%d" % s for s in range(start, start + count))))
    r.ready()
    r.advance()


def test_a_lost_decided_in_a_streamed_reply_is_fetched_again_under_load() -> None:
    server = Replica(1, Q3, random.Random(1))
    _learn(server, 0, 5000)
    follower = Replica(2, Q3, random.Random(2))
    now, step = 0.0, 0.01  # 10 ms a round trip; 20 slots chosen per round trip
    dropped = False
    in_flight: list[Message] = []  # replies sent in one round, delivered in the next
    for _ in range(1000):  # 10 s of virtual time
        now += step
        _learn(server, server.first_unchosen, 20)
        follower.step(Commit(1, B, server.first_unchosen))  # the leader's heartbeat
        for msg in in_flight:
            if isinstance(msg, Decided) and msg.slot > 0 and not dropped:
                dropped = True  # lost (a full send queue, a reset connection)
                continue
            follower.step(msg)
        in_flight = []
        follower.tick(now)
        server.tick(now)
        to_server = [s.msg for s in follower.ready().send_now if 1 in s.to]
        follower.advance()
        for msg in to_server:
            if isinstance(msg, Fetch):
                server.step(msg)
                in_flight += [s.msg for s in server.ready().send_now if 2 in s.to]
                server.advance()
    assert dropped
    # Catch-up outpaces the writes: the follower is near the tip, not stuck at the hole.
    assert follower.first_unchosen >= server.first_unchosen - 200, (
        follower.first_unchosen,
        server.first_unchosen,
    )
