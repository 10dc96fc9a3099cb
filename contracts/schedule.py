"""Pre-warm windows: a 5-field cron in an IANA timezone, a duration, a number of replicas.

One parser for both homes: the local activator runs the windows itself (:func:`next_start`), and
``ember deploy`` turns them into CronJobs (Kubernetes evaluates the same expression with the same
``timeZone``). Cron fields: minute, hour, day of month, month, day of week; ``*``, lists, ranges,
steps (``*/15``, ``1-5/2``), month and weekday names; when both day fields are restricted a day
matches either (cron's rule). Daylight saving: the expression is wall-clock time in the zone; a
time that does not exist (spring forward) fires at the first instant after the gap, a time that
happens twice (fall back) fires once, at its first occurrence.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contracts.durations import parse_duration
from contracts.errors import ConfigError

_NAMES = {
    3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}
_BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_FIELDS = ["minute", "hour", "day of month", "month", "day of week"]


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    def day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        weekday = (day.weekday() + 1) % 7  # Python: Monday 0; cron: Sunday 0
        by_day, by_weekday = day.day in self.days, weekday in self.weekdays
        if self.any_day:
            return by_weekday
        if self.any_weekday:
            return by_day
        return by_day or by_weekday


def parse_cron(text: str) -> Cron:
    parts = text.split()
    if len(parts) != 5:
        raise ConfigError(f"cron {text!r}: 5 fields expected (minute hour day month weekday)")
    sets = [_field(p, i, text) for i, p in enumerate(parts)]
    weekdays = frozenset(d % 7 for d in sets[4])
    return Cron(
        text, sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] == "*", parts[4] == "*"
    )


def _field(part: str, index: int, text: str) -> frozenset[int]:
    low, high = _BOUNDS[index]
    out: set[int] = set()
    for item in part.split(","):
        base, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                start, end = low, high
            elif "-" in base:
                a, b = base.split("-", 1)
                start, end = _value(a, index), _value(b, index)
            else:
                start = _value(base, index)
                end = high if step_text else start
        except ValueError:
            raise ConfigError(f"cron {text!r}: bad {_FIELDS[index]} {item!r}") from None
        if step < 1 or not low <= start <= end <= high:
            raise ConfigError(
                f"cron {text!r}: {_FIELDS[index]} {item!r} is outside {low}-{high} or reversed"
            )
        out.update(range(start, end + 1, step))
    return frozenset(out)


def _value(token: str, index: int) -> int:
    names = _NAMES.get(index)
    if names and token.lower() in names:
        return names.index(token.lower()) + (1 if index == 3 else 0)
    return int(token)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown timezone {name!r} (an IANA name, e.g. Europe/Paris)") from None


def next_start(cron: Cron, tz: ZoneInfo, after: dt.datetime) -> dt.datetime:
    """The first firing strictly after ``after`` (an aware datetime), as an aware UTC datetime."""
    after_utc = after.astimezone(dt.UTC)
    local_day = after_utc.astimezone(tz).date() - dt.timedelta(days=1)
    for _ in range(366 * 5):
        if cron.day_matches(local_day):
            for hour in sorted(cron.hours):
                for minute in sorted(cron.minutes):
                    fire = _instant(local_day, hour, minute, tz)
                    if fire > after_utc:
                        return fire
        local_day += dt.timedelta(days=1)
    raise ConfigError(f"cron {cron.text!r} never fires")


def _instant(day: dt.date, hour: int, minute: int, tz: ZoneInfo) -> dt.datetime:
    """Wall-clock ``day hour:minute`` in ``tz`` as a UTC instant (gaps move forward)."""
    local = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)  # fold=0: first
    as_utc = local.astimezone(dt.UTC)
    if as_utc.astimezone(tz).replace(tzinfo=None) != local.replace(tzinfo=None):
        return _gap_end(local, tz)  # a time the clock change skipped
    return as_utc


def _gap_end(local: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The first UTC instant whose wall clock in ``tz`` is at or after ``local``."""
    naive = local.replace(tzinfo=None)
    probe = local.astimezone(dt.UTC) - dt.timedelta(hours=3)
    while probe.astimezone(tz).replace(tzinfo=None) < naive:
        probe += dt.timedelta(minutes=1)
    return probe.replace(second=0, microsecond=0)


@dataclass(frozen=True)
class Window:
    cron: Cron
    tz: ZoneInfo
    duration_s: float
    replicas: int

    def next_start(self, after: dt.datetime) -> dt.datetime:
        return next_start(self.cron, self.tz, after)

    def active_until(self, now: dt.datetime) -> dt.datetime | None:
        """The end of a window that started before ``now`` and is still open, if any."""
        start = next_start(self.cron, self.tz, now - dt.timedelta(seconds=self.duration_s))
        end = start + dt.timedelta(seconds=self.duration_s)
        return end if start <= now < end else None


def parse_window(raw: dict[str, object], where: str) -> Window:
    if not isinstance(raw, dict) or "cron" not in raw:
        raise ConfigError(f"{where}: a pre-warm window needs 'cron' (and duration_s)")
    try:
        cron = parse_cron(str(raw["cron"]))
        tz = zone(str(raw.get("timezone", "UTC")))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        duration = parse_duration(raw.get("duration_s", 0))
    except ValueError as exc:
        raise ConfigError(f"{where}: duration_s: {exc}") from None
    try:
        replicas = int(raw.get("replicas", 1))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: replicas must be a whole number") from None
    if duration <= 0 or replicas < 1:
        raise ConfigError(f"{where}: duration_s must be > 0 and replicas >= 1")
    window = Window(cron, tz, duration, replicas)
    # a window longer than the time to its next start would never close
    t = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    starts = []
    for _ in range(32):
        t = window.next_start(t)
        starts.append(t)
    shortest = min((b - a).total_seconds() for a, b in itertools.pairwise(starts))
    if duration > shortest:
        raise ConfigError(
            f"{where}: duration_s {duration:g} is longer than the {shortest:g} s between starts "
            f"of {cron.text!r}"
        )
    return window
