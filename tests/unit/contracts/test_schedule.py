"""Pre-warm windows: cron parsing, time zones across DST, bad windows named at load.

The activator running them is tested with its pool (tests/unit/activator/test_pool.py and
tests/unit/activator/pool/test_prewarm.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from contracts.errors import ConfigError
from contracts.schedule import next_start, parse_cron, parse_window, zone
from contracts.stack import load_stack

UTC = dt.UTC


def fires(cron: str, tz: str, after: dt.datetime, n: int = 3) -> list[str]:
    out, t, zone_ = [], after, zone(tz)
    for _ in range(n):
        t = next_start(parse_cron(cron), zone_, t)
        out.append(t.astimezone(zone_).strftime("%a %Y-%m-%d %H:%M %z"))
    return out


def test_fields_names_steps_and_the_day_or_weekday_rule() -> None:
    assert fires("*/20 9 * * *", "UTC", dt.datetime(2026, 1, 1, tzinfo=UTC)) == [
        "Thu 2026-01-01 09:00 +0000",
        "Thu 2026-01-01 09:20 +0000",
        "Thu 2026-01-01 09:40 +0000",
    ]
    # day 13 OR a Friday, as cron does when both day fields are restricted
    assert fires("0 0 13 * fri", "UTC", dt.datetime(2026, 2, 1, tzinfo=UTC)) == [
        "Fri 2026-02-06 00:00 +0000",
        "Fri 2026-02-13 00:00 +0000",
        "Fri 2026-02-20 00:00 +0000",
    ]
    assert fires("0 8 * jan-feb mon", "America/New_York", dt.datetime(2026, 2, 20, tzinfo=UTC))[
        1
    ].startswith("Mon 2027-01-04 08:00")


def test_daylight_saving_gaps_and_repeats() -> None:
    # Paris springs forward at 02:00 on 2026-03-29: 02:30 does not exist that day
    assert fires("30 2 * * *", "Europe/Paris", dt.datetime(2026, 3, 28, 12, tzinfo=UTC)) == [
        "Sun 2026-03-29 03:00 +0200",
        "Mon 2026-03-30 02:30 +0200",
        "Tue 2026-03-31 02:30 +0200",
    ]
    # and falls back at 03:00 on 2026-10-25: 02:30 happens twice, it fires once
    assert fires("30 2 * * *", "Europe/Paris", dt.datetime(2026, 10, 24, 12, tzinfo=UTC)) == [
        "Sun 2026-10-25 02:30 +0200",
        "Mon 2026-10-26 02:30 +0100",
        "Tue 2026-10-27 02:30 +0100",
    ]
    # 08:00 stays 08:00 local across the change (the UTC instant moves)
    fire = fires("0 8 * * *", "Europe/Paris", dt.datetime(2026, 10, 24, 12, tzinfo=UTC), 2)
    assert fire == ["Sun 2026-10-25 08:00 +0100", "Mon 2026-10-26 08:00 +0100"]


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"cron": "0 8 * *", "duration_s": 60}, "5 fields"),
        ({"cron": "61 8 * * *", "duration_s": 60}, "outside 0-59"),
        ({"cron": "0 8 * * funday", "duration_s": 60}, "bad day of week"),
        ({"cron": "0 8 * * *", "timezone": "Mars/Olympus", "duration_s": 60}, "unknown timezone"),
        ({"cron": "*/5 * * * *", "duration_s": 600}, "longer than the 300 s"),
        ({"cron": "0 8 * * *", "duration_s": 0}, "duration_s must be > 0"),
        ({"duration_s": 60}, "needs 'cron'"),
    ],
)
def test_bad_windows_are_named(window: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_window(window, "prewarm[0]")


def test_a_bad_window_stops_the_stack_at_load(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        "name: m\nprewarm:\n  - {cron: '0 25 * * *', duration_s: 60}\n"
    )
    (tmp_path / "ember.yaml").write_text("models:\n  - config: m.yaml\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: prewarm\[0\].*outside 0-23"):
        load_stack(tmp_path / "ember.yaml")
