"""A node's clock and its one timer.

Theory of operation
-------------------
A node reads time only through ``tick(now)`` (docs/architecture.md, *The core's
contract*). Here ``now`` is the event loop's monotonic clock, run at ``rate`` against
real time: 1.0, except in chaos tests of clock-rate drift (``--chaos-clock``), where
the leases' drift bound must hold against a clock that really runs fast or slow. The
node asks to be ticked again by a deadline on its own clock; the timer converts it to
loop time and is only ever moved earlier (a timer that fires early just ticks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["NodeClock"]


class NodeClock:
    """The node's clock (``now``) and its timer (``wake_at``; ``on_timer`` fires)."""

    def __init__(self, rate: float, on_timer: Callable[[], None]) -> None:
        if not 0.5 <= rate <= 2.0:
            raise ValueError(f"clock_rate must lie in [0.5, 2], not {rate}")
        self.rate = rate
        """How fast this clock runs against real time."""
        self.origin = 0.0
        """The loop time at which the clock started (it agrees with the loop there)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._on_timer = on_timer
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop`` from now on."""
        self.loop = loop
        self.origin = loop.time()

    def now(self) -> float:
        """This node's clock: the loop's monotonic clock, at ``rate``."""
        assert self.loop is not None
        real = self.loop.time()
        if self.rate == 1.0:
            return real
        return self.origin + (real - self.origin) * self.rate

    def loop_time(self, node_time: float) -> float:
        """The loop time at which this clock shows ``node_time``."""
        if self.rate == 1.0:
            return node_time
        return self.origin + (node_time - self.origin) / self.rate

    def wake_at(self, deadline: float | None) -> None:
        """Fire the timer by ``deadline`` (this clock's time), if it is earlier than
        the one set."""
        loop = self.loop
        assert loop is not None
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(self.loop_time(deadline), self._fire)

    def cancel(self) -> None:
        """No more timer (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self._on_timer()
