"""The relayed requests' deadlines: first set, first due, one loop timer for them all."""

from __future__ import annotations

import time

from activator.deadlines import Deadlines
from tests.fixtures.frontdoor import until


class Item:
    def __init__(self, name: str, fired: list[str]) -> None:
        self.name, self.fired = name, fired
        self.deadline = 0.0

    def timed_out(self, timeout_s: float) -> None:
        self.fired.append(f"{self.name} {timeout_s:g}")


async def test_deadlines_fire_in_the_order_they_were_set_and_not_once_taken_out() -> None:
    fired: list[str] = []
    deadlines = Deadlines(0.05)
    a, b, c = Item("a", fired), Item("b", fired), Item("c", fired)
    deadlines.add(a)
    deadlines.add(b)
    assert b.deadline >= a.deadline > time.monotonic()
    deadlines.discard(a)  # it ended in time
    deadlines.add(c)
    await until(lambda: len(fired) == 2, "both deadlines to pass")
    assert fired == ["b 0.05", "c 0.05"] and len(deadlines) == 0
    deadlines.close()


async def test_one_timer_is_armed_however_many_deadlines_are_set() -> None:
    deadlines = Deadlines(60)
    items = [Item(str(i), []) for i in range(100)]
    for item in items:
        deadlines.add(item)
    timer = deadlines._timer
    assert timer is not None and len(deadlines) == 100
    for item in items:
        deadlines.discard(item)
    deadlines.add(items[0])
    assert deadlines._timer is timer  # still armed: no timer per deadline
    deadlines.close()
    assert deadlines._timer is None and len(deadlines) == 0


async def test_a_timer_that_fires_early_for_a_later_deadline_is_armed_again() -> None:
    fired: list[str] = []
    deadlines = Deadlines(0.05)
    first, second = Item("first", fired), Item("second", fired)
    deadlines.add(first)
    await until(lambda: time.monotonic() > first.deadline - 0.02, "some of the first's time")
    deadlines.discard(first)
    deadlines.add(second)  # the timer armed for the first fires before the second is due
    await until(lambda: bool(fired), "the second deadline to pass")
    assert fired == ["second 0.05"] and time.monotonic() >= second.deadline
    deadlines.close()
