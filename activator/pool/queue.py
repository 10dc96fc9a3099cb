"""The admission queue: requests waiting for a slot, first in first out, bounded, with deadlines.

A request that finds no free slot joins the queue (past ``size`` it is refused: 503 + Retry-After)
and waits for :meth:`AdmissionQueue.hand_off` to give it a slot, oldest first. Each waiter has a
timer for its deadline: when it fires the waiter leaves the queue and its wait raises
``TimeoutError`` (the pool answers 504). A waiter that goes away (its client disconnected) leaves
the queue, and gives back a slot it was handed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from activator.errors import ActivatorError, QueueFull
from activator.pool.clock import Clock, Timer

S = TypeVar("S")  # what a waiter is handed: a slot (the pool's: a replica)


@dataclass(eq=False, slots=True)
class Waiter(Generic[S]):
    future: asyncio.Future[S]
    arrival: float  # the clock's monotonic time when it joined
    deadline: Timer | None = None
    prefer: Callable[[S], bool] | None = None  # the slots it would rather have (see join)


class AdmissionQueue(Generic[S]):
    def __init__(self, model: str, size: int, clock: Clock) -> None:
        self.model = model
        self.size = size
        self.clock = clock
        # read directly by the pool's fast path: an empty deque means nobody waits
        self.waiters: deque[Waiter[S]] = deque()

    def __len__(self) -> int:
        return len(self.waiters)

    def join(self, timeout_s: float, prefer: Callable[[S], bool] | None = None) -> Waiter[S]:
        """A place at the back of the queue, for ``timeout_s`` at most; QueueFull past the bound.
        ``prefer``: the slots it would rather be handed (a group's member: replicas where it is
        awake), which the claim of :meth:`hand_off` may read from the head waiter."""
        if len(self.waiters) >= self.size:
            raise QueueFull(f"model '{self.model}': pending request queue full ({self.size})")
        future: asyncio.Future[S] = asyncio.get_running_loop().create_future()
        waiter = Waiter(future, self.clock.monotonic(), prefer=prefer)
        waiter.deadline = self.clock.call_later(timeout_s, self._expire, waiter)
        self.waiters.append(waiter)
        return waiter

    async def wait(self, waiter: Waiter[S], give_back: Callable[[S], None]) -> S:
        """The slot ``waiter`` is handed; TimeoutError at its deadline, or what :meth:`fail_all`
        set. Cancelled (the client left), it leaves the queue and a slot it got goes to
        ``give_back``."""
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self.forget(waiter)
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                give_back(future.result())  # handed a slot as it was cancelled
            raise

    def hand_off(self, claim: Callable[[], S | None]) -> None:
        """Hand free slots to the waiters, oldest first; ``claim`` takes one, or None when none is
        free."""
        waiters = self.waiters
        while waiters:
            head = waiters[0]
            if head.future.done():  # cancelled, not yet forgotten
                waiters.popleft()
                continue
            slot = claim()
            if slot is None:
                return
            waiters.popleft()
            if head.deadline is not None:
                head.deadline.cancel()
            head.future.set_result(slot)

    def fail_all(self, error: ActivatorError) -> None:
        """Every waiter's wait raises ``error`` now; the queue is empty after."""
        for waiter in self.waiters:
            if waiter.deadline is not None:
                waiter.deadline.cancel()
            if not waiter.future.done():
                waiter.future.set_exception(error)
        self.waiters.clear()

    def forget(self, waiter: Waiter[S]) -> None:
        if waiter.deadline is not None:
            waiter.deadline.cancel()
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def _expire(self, waiter: Waiter[S]) -> None:
        if waiter.future.done():
            return
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)
        waiter.future.set_exception(TimeoutError())
