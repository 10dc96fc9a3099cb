"""Warm windows: a floor of replicas held for a while, whether or not requests come.

Three sources open one: the admin API (``warm``, ended by its ``sleep``, logged as a
``warm_end`` event: ``sleep`` events are a model's sleeps on a shared replica), the spec's
``prewarm`` cron windows (:meth:`WarmWindows.run` applies each once as it opens), and the
keep-alive policy's predicted next call. Overlapping windows hold the larger floor until the later
end.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from activator.events import EventLog
from activator.pool.clock import Clock
from contracts.events import Prewarm, WarmEnd
from contracts.schedule import Window

#: how the windows ask the pool to warm: ``warm(seconds, source, replicas)``
Warm = Callable[[float, str, int], None]
#: who opened a window, in words, by its source (another source: a client of the admin API)
SOURCES = {
    "admin": "the admin API",
    "prewarm": "ember prewarm",
    "schedule": "a pre-warm window",
    "policy": "the keep-alive policy's pre-warm",
    "repository-load": "a repository load request",
}


class WarmWindows:
    def __init__(
        self,
        model: str,
        windows: Sequence[Window],
        events: EventLog,
        *,
        clock: Clock,
        warm: Warm,
    ) -> None:
        self.model = model
        self.windows = list(windows)
        self.events = events
        self.clock = clock
        self._warm = warm
        self.until = 0.0  # the clock's monotonic time the current window ends (0: none)
        self.replicas = 0  # the floor it holds
        self.source = ""  # who opened (or last joined) it
        self._applied: set[tuple[int, dt.datetime]] = set()  # (window, start) already warmed

    def hold(self, seconds: float, *, replicas: int, source: str) -> None:
        """Hold ``replicas`` for ``seconds`` from now (joining a window already open)."""
        now = self.clock.monotonic()
        if self.until <= now:
            self.replicas = 0
        self.until = max(self.until, now + seconds)
        self.replicas = max(self.replicas, replicas)
        self.source = source
        self.events.emit(
            Prewarm(
                model=self.model,
                until=self.clock.time() + seconds,
                replicas=replicas,
                source=source,
            )
        )

    def end(self) -> None:
        """Close any open window now (the admin API's ``sleep``; logged as ``warm_end``)."""
        self.until = 0.0
        self.replicas = 0
        self.events.emit(WarmEnd(model=self.model))

    def why(self) -> str:
        """Who holds the open window, in words (for the log)."""
        return SOURCES.get(self.source, f"the admin API ({self.source})")

    def floor(self) -> int:
        """Replicas the open window holds (0 when none is open)."""
        return self.replicas if self.until > self.clock.monotonic() else 0

    def remaining_s(self) -> float:
        return max(0.0, self.until - self.clock.monotonic())

    def apply(self, now: dt.datetime) -> float:
        """Warm for any window open at ``now`` (once per opening); seconds until the next one."""
        soonest = 3600.0
        for i, window in enumerate(self.windows):
            end = window.active_until(now)
            if end is not None:
                start = end - dt.timedelta(seconds=window.duration_s)
                if (i, start) not in self._applied:
                    self._applied.add((i, start))
                    self._warm((end - now).total_seconds(), "schedule", window.replicas)
            upcoming = (window.next_start(now) - now).total_seconds()
            soonest = min(soonest, upcoming)
        return soonest

    async def run(self) -> None:
        """Apply the windows as they open, for as long as the pool runs."""
        while True:
            wait = self.apply(dt.datetime.fromtimestamp(self.clock.time(), dt.UTC))
            # wake at the next start, and at least every minute (clock changes, suspends)
            await self.clock.sleep(min(60.0, max(0.05, wait + 0.01)))
