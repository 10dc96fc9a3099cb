"""The admission queue: bounded, first in first out, deadlines on the clock, in-order hand-off."""

from __future__ import annotations

import asyncio

import pytest

from activator.errors import ModelUnavailable, QueueFull
from activator.pool.queue import AdmissionQueue
from activator.testing import ManualClock
from tests.unit.activator.pool.fakes import outcome, turns


async def test_past_its_bound_a_request_is_refused() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue("m", 2, ManualClock())
    queue.join(5)
    queue.join(5)
    with pytest.raises(QueueFull, match=r"model 'm': pending request queue full \(2\)"):
        queue.join(5)
    assert len(queue) == 2


async def test_slots_go_to_the_oldest_waiters_first() -> None:
    clock = ManualClock()
    queue: AdmissionQueue[str] = AdmissionQueue("m", 10, clock)
    waits = [asyncio.create_task(queue.wait(queue.join(60), print)) for _ in range(3)]
    free = ["a", "b"]
    queue.hand_off(lambda: free.pop(0) if free else None)
    assert [await outcome(w) for w in waits[:2]] == ["a", "b"] and len(queue) == 1
    queue.hand_off(lambda: None)  # no free slot: the third waits on
    await clock.advance(30)
    assert not waits[2].done()
    queue.hand_off(lambda: "c")
    assert await outcome(waits[2]) == "c" and len(queue) == 0
    assert clock.pending == 0  # each handed waiter's deadline was cancelled


async def test_at_its_deadline_a_waiter_leaves_with_a_timeout() -> None:
    clock = ManualClock()
    queue: AdmissionQueue[str] = AdmissionQueue("m", 10, clock)
    first = asyncio.create_task(queue.wait(queue.join(5), print))
    second = asyncio.create_task(queue.wait(queue.join(10), print))
    await clock.advance(5)
    with pytest.raises(TimeoutError):
        await outcome(first)
    assert len(queue) == 1 and not second.done()
    queue.hand_off(lambda: "a")
    assert await outcome(second) == "a"


async def test_a_waiter_that_leaves_gives_back_its_place_and_any_slot_it_got() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue("m", 10, ManualClock())
    given_back: list[str] = []

    async def request() -> str:  # as the pool does: join, then wait, in the request's task
        return await queue.wait(queue.join(60), given_back.append)

    leaving = asyncio.create_task(request())
    staying = asyncio.create_task(request())
    await turns(lambda: len(queue) == 2, "both waiting")
    leaving.cancel()
    await asyncio.wait((leaving,))
    assert len(queue) == 1 and given_back == []
    queue.hand_off(lambda: "a")  # handed a slot...
    staying.cancel()  # ...and gone before it ran: the slot goes back
    await asyncio.wait((staying,))
    assert staying.cancelled() and given_back == ["a"]


async def test_a_cancelled_waiter_not_yet_forgotten_is_skipped() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue("m", 10, ManualClock())
    gone = queue.join(60)
    waiting = asyncio.create_task(queue.wait(queue.join(60), print))
    gone.future.cancel()
    claimed: list[str] = []
    queue.hand_off(lambda: claimed.append("a") or "a")
    assert await outcome(waiting) == "a" and claimed == ["a"]  # one slot taken, not two


async def test_fail_all_answers_every_waiter_and_empties_the_queue() -> None:
    clock = ManualClock()
    queue: AdmissionQueue[str] = AdmissionQueue("m", 10, clock)
    waits = [asyncio.create_task(queue.wait(queue.join(60), print)) for _ in range(3)]
    await turns(lambda: clock.pending == 3, "three deadlines")
    queue.fail_all(ModelUnavailable("model 'm' could not start: bad weights"))
    for wait in waits:
        with pytest.raises(ModelUnavailable, match="bad weights"):
            await outcome(wait)
    assert len(queue) == 0 and clock.pending == 0
