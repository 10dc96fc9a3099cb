"""Time for the pool, behind a seam: the system's clock in production, a hand-driven one in tests
(:class:`activator.testing.ManualClock`).

Everything the pool does with time (now, the wall clock, sleeps, timeouts, timers) goes through a
:class:`Clock`, so a unit test can hold a model warm for ten minutes by calling
``await clock.advance(600)`` instead of waiting for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Timer(Protocol):
    """A callback scheduled for later (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and deadlines)."""
        ...

    def time(self) -> float:
        """The wall clock, seconds since the epoch (for schedules and the policy's history)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait_for(self, aw: Awaitable[T], seconds: float) -> T:
        """``aw``'s result; TimeoutError (and ``aw`` cancelled) after ``seconds``."""
        ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Call ``callback(*args)`` on the event loop ``delay`` seconds from now."""
        ...


class SystemClock:
    """The real clock: ``time`` and the running event loop."""

    # plain functions, not methods: the pool's hot path reads the time without a wrapper call
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_for(self, aw: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(aw, seconds)

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback, *args)
