"""The cost report's sleep accounting: what models saved by sleeping on a group's replicas.

Models sharing a group's replicas sleep on them (``sleep`` / ``wake`` events, levels ``host`` and
``disk``). Per model that slept: its seconds asleep per level on running replicas (a sleep ends at
its wake or when that replica stops; one still open ends with the log), the wakes and their median
``wake_s`` per level. Those seconds are its *device-seconds saved by sleeping*: asleep on a shared
replica the model held no device of its own, where one replica per model would have held one for
it. They are priced at the model's own price (``--price MODEL=USD``), else at its group's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from contracts.events import Sleep as SleepEvent
from contracts.events import Wake

LEVELS = ("host", "disk")  # the levels a model sleeps at on a running replica
SLEPT = (
    "Device-seconds saved by sleeping: the seconds a model slept (host: weights in host RAM, "
    "disk: weights on local disk) on a shared replica while that replica ran. Asleep, it held no "
    "device of its own, where one replica per model would have held a device for it. Priced at "
    "the model's own price per replica-hour where the report knows one, else at its group's. "
    "Their baseline is one replica per model while the shared replica ran, not one always on, so "
    "they are a figure of their own, not a part of the scale-to-zero saving (the group's "
    "replicas, in the group's row)."
)


@dataclass
class Sleep:
    """A model's sleeps on its groups' replicas."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LEVELS, 0.0))
    wakes: dict[str, list[float | None]] = field(default_factory=lambda: {lv: [] for lv in LEVELS})
    groups: set[str] = field(default_factory=set)
    # (group, replica) -> (level, since): the sleeps still open
    asleep: dict[tuple[str, Any], tuple[str, float]] = field(default_factory=dict)

    def end(self, key: tuple[str, Any], ts: float) -> str | None:
        """Close the sleep on ``key`` at ``ts``; the level it was at (None: it was awake)."""
        if key not in self.asleep:
            return None
        level, since = self.asleep.pop(key)
        self.seconds[level] += max(0.0, ts - since)
        return level

    def until(self, end: float) -> dict[str, float]:
        """Seconds asleep per level, the sleeps still open counted to ``end``."""
        seconds = dict(self.seconds)
        for level, since in self.asleep.values():
            seconds[level] += max(0.0, end - since)
        return seconds


def sleep_or_wake(
    s: Sleep | None, e: SleepEvent | Wake, key: tuple[str, Any], *, stopped: float | None
) -> Sleep | None:
    """A model's sleeps after its ``sleep`` or ``wake`` event ``e`` on one of its group's
    replicas, ``key`` (the group, and the replica as the report knows it); ``stopped``: when that
    replica stopped, if it did (None: it runs, or is unknown)."""
    if stopped is not None and stopped <= e.ts:
        return s  # a replica that stopped holds no sleeping model
    open_ = s.asleep.get(key) if s is not None else None
    # a wake's level is the one it woke from; without one, the open sleep's
    level = e.level if e.level in LEVELS else (open_ or (None,))[0]
    if level not in LEVELS or (isinstance(e, SleepEvent) and open_ and open_[0] == level):
        return s  # no level to count, or asleep at that level already
    s = s or Sleep()
    s.groups.add(key[0])
    s.end(key, e.ts)  # a wake, or a deeper (or shallower) sleep: the last level ends here
    if isinstance(e, Wake):
        s.wakes[level].append(None if e.wake_s is None else float(e.wake_s))
    else:
        s.asleep[key] = (level, e.ts)
    return s


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _figures(seconds: dict[str, float], wakes: dict[str, list[float | None]]) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "device_seconds_saved": sum(seconds.values()),
        "wakes": {lv: {"count": len(wakes[lv]), "wake_s_p50": _median(wakes[lv])} for lv in LEVELS},
    }


def sleep_row(s: Sleep | None, price: float | None, end: float) -> dict[str, Any] | None:
    """A model's sleeps (None when it never slept: no zeros for models that do not share)."""
    if s is None:
        return None
    figures = _figures(s.until(end), s.wakes)
    saved = figures["device_seconds_saved"]
    return {
        "groups": sorted(s.groups),
        **figures,
        "saved_usd": None if price is None else round(saved * price / 3600, 6),
    }


def sleep_total(
    sleeps: dict[str, Sleep], rows: list[dict[str, Any]], span: float
) -> dict[str, Any] | None:
    """Every model's sleeps together (wake medians over all wakes at a level), and next to them
    the replica-seconds scale to zero saved: per model or group that ran replicas of its own, the
    span less its replicas' lifetimes. ``rows``: the report's, each with its ``sleep``."""
    slept = [r for r in rows if r["sleep"] is not None]
    if not slept:
        return None
    priced = [r["sleep"]["saved_usd"] for r in slept if r["sleep"]["saved_usd"] is not None]
    seconds = {lv: sum(r["sleep"]["seconds"][lv] for r in slept) for lv in LEVELS}
    wakes = {lv: [w for s in sleeps.values() for w in s.wakes[lv]] for lv in LEVELS}
    lived = [
        sum(r["replica_seconds"][k] for k in ("busy", "warm_idle", "loading", "prewarmed_unused"))
        for r in rows
        if r["replica_starts"]
    ]
    return {
        **_figures(seconds, wakes),
        "saved_usd": round(sum(priced), 6) if priced else None,
        "unpriced": [r["model"] for r in slept if r["sleep"]["saved_usd"] is None],
        "device_seconds_saved_by_zero": sum(span - life for life in lived),
    }
