"""The ``tiered`` policy: sleep at levels instead of only hot or at zero.

Levels, from most to least ready: ``hot`` (weights on the device: costs device-seconds), ``host``
(weights in host RAM: no device time, host memory; wakes in ``WakeCosts.host``), ``disk``
(weights on local NVMe / the page cache: wakes in ``WakeCosts.disk``) and ``zero`` (no replica:
wakes in the full cold start, ``WakeCosts.zero``).

After each request the policy returns a :class:`TierPlan`: how long after serving ends the model
drops to host, to disk and to zero. The rule, a ski-rental break-even sharpened by the hybrid
policy's idle-time prediction (:meth:`activator.policy.Hybrid.head_tail`):

* **hot** for the break-even window ``B = device_s_per_wake_s * wake.host`` (60 s with the
  defaults: a second of wake latency is worth 1,200 device-seconds), the longest that holding the
  device costs less than the host wake it avoids. When the histogram is representative, hot only
  until its 99th percentile plus 10% if that is sooner, and not at all if even its 5th percentile
  minus 10% is past ``B`` (the next request will not come while it would still be hot).
* **host** for ``host_hold_s`` (20 min: the host-memory budget), **disk** for ``disk_hold_s``
  (1 h), extended to the predicted 99th percentile when the histogram is representative, so a
  regular hourly model waits on disk instead of at zero. A level that wakes no faster than the
  one below it is skipped, and so is one the model cannot sleep at (``levels``: a command
  engine without a sleep call for it).

The default wake costs (host 0.05 s, disk 0.15 s) are what the runtime measured for MiniLM on one
machine; replace them with measured values (``--wake host=S --wake disk=S``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from activator.errors import ConfigError
from activator.policy import History, Hybrid
from contracts.replica import SleepLevel


class Level(enum.StrEnum):
    """Where the policy has a model, in depth order: awake (``hot``), asleep at one of the
    replicas' :class:`~contracts.replica.SleepLevel` s, or at ``zero`` (no replica holds it)."""

    HOT = "hot"
    HOST = SleepLevel.HOST.value
    DISK = SleepLevel.DISK.value
    ZERO = "zero"

    @property
    def depth(self) -> int:
        """0 awake, then the sleep levels' own depths, then zero."""
        if self is Level.HOT:
            return 0
        return 3 if self is Level.ZERO else SleepLevel(self.value).depth

    @property
    def on_replica(self) -> SleepLevel | None:
        """The level a replica is asked to sleep at for this one (zero is the replicas' to
        reach: the deepest a replica goes is ``disk``); None: awake."""
        if self is Level.HOT:
            return None
        return SleepLevel.HOST if self is Level.HOST else SleepLevel.DISK


LEVELS: tuple[Level, ...] = tuple(Level)
SLEEP_LEVELS: tuple[Level, ...] = (Level.HOST, Level.DISK)


@dataclass(frozen=True)
class WakeCosts:
    """Seconds a request waits for the model to reach the device from each level."""

    host: float = 0.05  # measured for MiniLM on this machine: a default, not a constant
    disk: float = 0.15
    zero: float = 2.0  # the full cold start (``--cold-start``)

    def of(self, level: Level) -> float:
        return 0.0 if level == "hot" else float(getattr(self, level))


def parse_wakes(items: list[str]) -> WakeCosts:
    """``["host=0.05", "disk=0.15"]`` into WakeCosts (``zero``, the cold start, is the
    simulator's ``--cold-start``); ConfigError (one line) if malformed."""
    values = {"host": WakeCosts.host, "disk": WakeCosts.disk}
    for item in items:
        level, eq, text = item.partition("=")
        if level not in SLEEP_LEVELS or not eq:
            raise ConfigError(f"--wake {item!r}: expected LEVEL=SECONDS, LEVEL one of host, disk")
        try:
            seconds = float(text)
        except ValueError:
            raise ConfigError(f"--wake {item!r}: {text!r} is not a number of seconds") from None
        if not seconds >= 0 or seconds == float("inf"):
            raise ConfigError(f"--wake {item!r}: the time must be 0 or more seconds")
        values[str(level)] = seconds
    return WakeCosts(values["host"], values["disk"])


@dataclass(frozen=True)
class TierPlan:
    """Seconds after serving ends at which the model drops to host, to disk and to zero."""

    host_at_s: float
    disk_at_s: float
    zero_at_s: float
    why: str

    def level_at(self, idle_s: float) -> Level:
        """The level the model is at ``idle_s`` after serving ended (where a request finds it)."""
        if idle_s <= self.host_at_s:
            return Level.HOT
        if idle_s <= self.disk_at_s:
            return Level.HOST
        if idle_s <= self.zero_at_s:
            return Level.DISK
        return Level.ZERO

    def split(self, idle_s: float) -> dict[Level, float]:
        """How an idle gap of ``idle_s`` seconds divides between the levels."""
        bounds = (0.0, self.host_at_s, self.disk_at_s, self.zero_at_s, float("inf"))
        return {
            level: max(0.0, min(idle_s, bounds[i + 1]) - bounds[i])
            for i, level in enumerate(LEVELS)
        }


@dataclass(frozen=True)
class Tiered:
    wake: WakeCosts = field(default_factory=WakeCosts)
    name: str = "tiered"
    device_s_per_wake_s: float = 1200.0  # device-seconds one second of wake latency is worth
    host_hold_s: float = 1200.0
    disk_hold_s: float = 3600.0
    hybrid: Hybrid = field(default_factory=Hybrid)
    # the levels the model can sleep at (a command engine's: those it has sleep calls for);
    # one it cannot is skipped, as one that wakes no faster than the next is
    levels: frozenset[Level] = frozenset(SLEEP_LEVELS)

    def decide(self, history: History) -> TierPlan:
        use_disk = Level.DISK in self.levels and self.wake.disk < self.wake.zero
        deeper = self.wake.disk if Level.DISK in self.levels else self.wake.zero
        use_host = Level.HOST in self.levels and self.wake.host < deeper
        first_sleep = Level.HOST if use_host else Level.DISK if use_disk else Level.ZERO
        breakeven = self.device_s_per_wake_s * self.wake.of(first_sleep)
        pattern = self.hybrid.head_tail(history)
        if pattern is None:
            hot, why = breakeven, f"no pattern: hot {breakeven:g}s (break-even)"
        elif pattern[0] > breakeven:
            hot, why = 0.0, f"next request after ~{pattern[0]:.0f}s > {breakeven:g}s: sleep now"
        else:
            hot = min(breakeven, pattern[1])
            why = f"p99 {pattern[1]:.0f}s: hot {hot:.0f}s"
        disk_at = hot + (self.host_hold_s if use_host else 0.0)
        zero_at = disk_at + (self.disk_hold_s if use_disk else 0.0)
        if use_disk and pattern is not None and pattern[1] > zero_at:
            zero_at = pattern[1]  # wait on disk for the predicted request, not at zero
        return TierPlan(hot, disk_at, zero_at, why)
