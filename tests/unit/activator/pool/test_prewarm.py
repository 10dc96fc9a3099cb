"""Warm windows: floors held for a while (admin, policy, cron windows), on a manual clock."""

from __future__ import annotations

import asyncio
import datetime as dt

from activator.pool.prewarm import WarmWindows
from activator.testing import ManualClock
from contracts.schedule import Window, parse_window
from tests.unit.activator.pool.fakes import Events

UTC = dt.UTC
SEVEN_AM = dt.datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def windows_for(
    clock: ManualClock, *windows: Window
) -> tuple[WarmWindows, Events, list[tuple[float, str, int]]]:
    events = Events()
    warmed: list[tuple[float, str, int]] = []
    ww = WarmWindows(
        "m", windows, events, clock=clock, warm=lambda s, src, n: warmed.append((s, src, n))
    )
    return ww, events, warmed


async def test_a_window_holds_its_floor_until_it_ends() -> None:
    clock = ManualClock(wall=SEVEN_AM.timestamp())
    ww, events, _ = windows_for(clock)
    assert ww.floor() == 0 and ww.remaining_s() == 0
    ww.hold(60, replicas=1, source="admin")
    ww.hold(30, replicas=2, source="admin")  # overlapping: the larger floor, the later end
    assert ww.floor() == 2 and ww.remaining_s() == 60
    await clock.advance(59.9)
    assert ww.floor() == 2
    await clock.advance(0.1)
    assert ww.floor() == 0
    ww.hold(10, replicas=1, source="policy")  # a new window: the old floor is gone
    assert ww.floor() == 1
    first = events.of("prewarm")[0]
    assert first["until"] == SEVEN_AM.timestamp() + 60 and first["source"] == "admin"


async def test_sleep_ends_the_window_now() -> None:
    clock = ManualClock()
    ww, events, _ = windows_for(clock)
    ww.hold(3600, replicas=3, source="admin")
    ww.end()
    assert ww.floor() == 0 and ww.remaining_s() == 0 and events.kinds()[-1] == "warm_end"


def test_a_cron_window_is_applied_once_per_opening() -> None:
    window = parse_window({"cron": "0 8 * * *", "duration_s": 3600, "replicas": 2}, "w")
    ww, _, warmed = windows_for(ManualClock(), window)
    assert ww.apply(SEVEN_AM) == 3600 and warmed == []  # an hour until it opens
    during = SEVEN_AM + dt.timedelta(hours=1, minutes=30)
    assert ww.apply(during) <= 3600
    assert warmed == [(1800.0, "schedule", 2)]  # warm for the rest of the window
    ww.apply(during + dt.timedelta(minutes=1))  # the same opening: not again
    assert len(warmed) == 1
    ww.apply(during + dt.timedelta(days=1))  # the next day's
    assert len(warmed) == 2


async def test_the_scheduler_warms_as_each_window_opens() -> None:
    clock = ManualClock(wall=SEVEN_AM.timestamp())
    window = parse_window({"cron": "0 8 * * *", "duration_s": 600}, "w")
    ww, _, warmed = windows_for(clock, window)
    scheduler = asyncio.create_task(ww.run())
    await clock.advance(3599)
    assert warmed == []
    await clock.advance(1)  # 08:00
    assert warmed == [(600.0, "schedule", 1)]
    await clock.advance(24 * 3600)  # and 08:00 the next day
    assert len(warmed) == 2
    scheduler.cancel()
    await asyncio.wait((scheduler,))
