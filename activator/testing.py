"""What tests of the activator (ours, or an embedding's) drive by hand: a :class:`ManualClock`
that stands in for :class:`~activator.pool.clock.SystemClock` behind the pool's clock seam."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _ManualTimer:
    __slots__ = ("args", "callback", "cancelled", "deadline", "seq")

    def __init__(
        self, deadline: float, seq: int, callback: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self.deadline, self.seq, self.callback, self.args = deadline, seq, callback, args
        self.cancelled = False

    def __lt__(self, other: _ManualTimer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def cancel(self) -> None:
        self.cancelled = True

    def when(self) -> float:
        return self.deadline


def _ns(t: float) -> float:
    # to the nanosecond, so that 4.9 s and then 0.1 s on reach a timer set 5 s on
    return round(t, 9)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ManualClock:
    """A clock that moves only when a test moves it, firing what falls due in order.

    ``await clock.advance(s)`` steps from timer to timer up to ``s`` seconds on, letting the event
    loop run a few turns after each, so a timer set by a callback that fired on the way (a
    controller's next tick, a sleep after a sleep) fires on the way too.
    """

    #: loop turns to let run after each timer fires (a wake-up is a turn or two)
    settle_turns = 8

    def __init__(self, *, monotonic: float = 1_000.0, wall: float = 1_800_000_000.0) -> None:
        self._now = _ns(monotonic)
        self._wall_offset = wall - monotonic
        self._timers: list[_ManualTimer] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _ManualTimer:
        deadline = _ns(self._now + max(0.0, delay))
        timer = _ManualTimer(deadline, next(self._seq), callback, args)
        heapq.heappush(self._timers, timer)
        if delay <= 0:  # due now: it fires on the loop's next turn, as asyncio's would
            asyncio.get_running_loop().call_soon(self._fire_due)
        return timer

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_later(seconds, _resolve, future)
        try:
            await future
        finally:
            timer.cancel()

    async def wait_for(self, aw: Awaitable[T], seconds: float) -> T:
        task = asyncio.ensure_future(aw)
        expired: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_later(seconds, _resolve, expired)
        try:
            await asyncio.wait((task, expired), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        await asyncio.wait((task,))
        raise TimeoutError

    @property
    def pending(self) -> int:
        """Timers set and neither fired nor cancelled."""
        return sum(not t.cancelled for t in self._timers)

    async def advance(self, seconds: float) -> None:
        """Let what is ready run (it may set timers now), then move ``seconds`` on, firing every
        timer that falls due, in order."""
        await self.settle()
        target = _ns(self._now + seconds)
        while self._timers and self._timers[0].deadline <= target:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, timer.deadline)
            timer.callback(*timer.args)
            await self.settle()
        self._now = max(self._now, target)
        await self.settle()

    async def settle(self) -> None:
        """Let the event loop run a few turns (what a fired timer woke does its work)."""
        for _ in range(self.settle_turns):
            await asyncio.sleep(0)

    def _fire_due(self) -> None:
        while self._timers and self._timers[0].deadline <= self._now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback(*timer.args)
