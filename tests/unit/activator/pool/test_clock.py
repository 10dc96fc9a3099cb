"""The clocks: the manual one fires timers in order as a test moves it; the system one is
asyncio's."""

from __future__ import annotations

import asyncio

import pytest

from activator.pool.clock import SystemClock
from activator.testing import ManualClock
from tests.unit.activator.pool.fakes import outcome, turns


async def test_time_moves_only_when_told_and_the_wall_clock_with_it() -> None:
    clock = ManualClock(monotonic=50.0, wall=1_000_000.0)
    assert (clock.monotonic(), clock.time()) == (50.0, 1_000_000.0)
    await asyncio.sleep(0)
    assert clock.monotonic() == 50.0
    await clock.advance(4.9)
    await clock.advance(0.1)  # to the nanosecond: 4.9 then 0.1 is 5
    assert (clock.monotonic(), clock.time()) == (55.0, 1_000_005.0)


async def test_timers_fire_in_order_including_those_set_on_the_way() -> None:
    clock = ManualClock()
    fired: list[tuple[str, float]] = []

    def note(what: str) -> None:
        fired.append((what, clock.monotonic() - 1000))
        if what == "a":
            clock.call_later(1, note, "a+1")  # due before "c": fires before it

    clock.call_later(3, note, "c")
    clock.call_later(1, note, "a")
    clock.call_later(2, note, "b").cancel()
    await clock.advance(2.5)
    assert fired == [("a", 1), ("a+1", 2)]
    await clock.advance(10)
    assert fired[-1] == ("c", 3) and clock.monotonic() == 1012.5
    assert clock.pending == 0


async def test_a_timer_due_now_fires_on_the_next_loop_turn() -> None:
    clock = ManualClock()
    fired: list[int] = []
    clock.call_later(0, fired.append, 1)
    await turns(lambda: fired == [1], "the due timer")


async def test_sleep_and_a_chain_of_sleeps() -> None:
    clock = ManualClock()

    async def ticks() -> list[float]:
        seen = []
        for _ in range(3):
            await clock.sleep(10)
            seen.append(clock.monotonic())
        return seen

    task = asyncio.create_task(ticks())
    await clock.advance(25)
    assert not task.done()
    await clock.advance(5)
    assert await outcome(task) == [1010, 1020, 1030]


async def test_a_cancelled_sleep_leaves_no_timer() -> None:
    clock = ManualClock()
    task = asyncio.create_task(clock.sleep(10))
    await turns(lambda: clock.pending == 1, "the sleep's timer")
    task.cancel()
    await asyncio.wait((task,))
    assert clock.pending == 0


async def test_wait_for_returns_the_result_or_times_out_on_the_clock() -> None:
    clock = ManualClock()
    event = asyncio.Event()
    done = asyncio.create_task(clock.wait_for(event.wait(), 5))
    await clock.advance(1)
    event.set()
    assert await outcome(done) is True
    event.clear()
    late = asyncio.create_task(clock.wait_for(event.wait(), 5))
    await clock.advance(4.9)
    assert not late.done()
    await clock.advance(0.1)
    with pytest.raises(TimeoutError):
        await outcome(late)
    assert clock.pending == 0


async def test_the_system_clock_is_asyncios() -> None:
    clock = SystemClock()
    loop = asyncio.get_running_loop()
    assert abs(clock.monotonic() - loop.time()) < 1  # the default loop's clock is monotonic
    fired = asyncio.Event()
    timer = clock.call_later(0, fired.set)
    assert isinstance(timer, asyncio.TimerHandle)
    await clock.wait_for(fired.wait(), 5)
    await clock.sleep(0)
    with pytest.raises(TimeoutError):
        await clock.wait_for(asyncio.Event().wait(), 0.001)
