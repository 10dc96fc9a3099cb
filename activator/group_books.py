"""A group's books: where each member is on each of the group's replicas, and what may still
change it.

:class:`Books` keeps, per replica, each member's :class:`~activator.tiered.Level` and why it is
unavailable there when its load or wake failed; what touches a member on a replica (a request
holding a slot, a sleep or load command in flight) and when it last did; and the wakes a
replica measured. What a replica says of its members (a :class:`~activator.scalers.base.
StatusReport`) is the truth, but for a member a request or a command has touched since it was
said, or touches now: a waking model says SLEEPING until it is awake, and a command's answer
says where it ended.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Collection

from activator.scalers.base import StatusReport
from activator.tiered import Level
from contracts.replica import ModelState, ModelStatus

log = logging.getLogger("ember.activator")

Key = tuple[int, str]  # (replica id, member)
#: ``slept(replica id, member, level, reason)``: a member went deeper than the books had it
Slept = Callable[[int, str, Level, str], None]


class Books:
    """Where a group's members are on its replicas (a replica not heard from yet: all hot)."""

    def __init__(self, members: Collection[str], slept: Slept) -> None:
        self.members = frozenset(members)
        self._slept = slept
        self.levels: dict[int, dict[str, Level]] = {}  # replica id -> member -> level
        self.failed: dict[int, dict[str, str]] = {}  # replica id -> member -> why, UNAVAILABLE
        self.seen: set[int] = set()  # replicas that have said where their members are
        self.commanding: collections.Counter[Key] = collections.Counter()  # in flight
        self.claims: collections.Counter[Key] = collections.Counter()  # requests in flight
        self.claim_counts: dict[Key, int] = {}  # requests ever taken
        # when a command or a request last touched a key (time.monotonic(), as a report's
        # ``at``): what a replica said before then is stale for it
        self._commanded_at: dict[Key, float] = {}
        self._claimed_at: dict[Key, float] = {}
        self._woke: dict[Key, tuple[Level, float]] = {}  # wakes as the replica measured them

    # ------------------------------------------------------------------ reading
    def level(self, rid: int, member: str) -> Level:
        return self.levels.get(rid, {}).get(member, Level.HOT)

    def awake(self, rid: int, member: str) -> bool:
        """Awake there, and not failed there."""
        return self.level(rid, member) is Level.HOT and member not in self.failed.get(rid, {})

    def busy(self, key: Key) -> bool:
        """A command or a request is in flight for ``key``."""
        return bool(self.commanding[key] or self.claims[key])

    # ------------------------------------------------------------------ writing
    def set_level(self, rid: int, member: str, level: Level, reason: str) -> None:
        """The member is at ``level`` there; deeper than the books had it: a sleep, told."""
        before = self.level(rid, member)
        self.levels.setdefault(rid, {})[member] = level
        if level.depth > before.depth:
            self._slept(rid, member, level, reason)

    def heard(self, rid: int, report: StatusReport) -> None:
        """What replica ``rid`` said of its members. Its first report sets the books without
        sleeps told: what a replica holds at its start is no sleep of the group's."""
        first = rid not in self.seen or report.first
        self.seen.add(rid)
        for status in report.statuses:
            key = (rid, status.model)
            if status.model not in self.members:
                continue
            if status.woke_from is not None and status.wake_s is not None:
                self._woke[key] = (Level(status.woke_from), status.wake_s)
            commanded = self._commanded_at.get(key, -math.inf)
            if not self.commanding[key] and report.at >= commanded:
                # a request never mends a failed load (a load does), nor fails a serving one
                # behind the replica's back: only a command makes what it said stale here
                self._book_failure(rid, status)
            touched = max(commanded, self._claimed_at.get(key, -math.inf))
            if self.busy(key) or report.at < touched:
                continue  # touched meanwhile: what it says next tells where it ended
            self._book_level(rid, status, first=first)

    def _book_level(self, rid: int, status: ModelStatus, *, first: bool) -> None:
        if status.state is ModelState.SLEEPING and status.level is not None:
            if first:
                self.levels.setdefault(rid, {})[status.model] = Level(status.level)
            else:
                why = "the replica's device memory budget"
                self.set_level(rid, status.model, Level(status.level), why)
        elif status.state is ModelState.READY:
            self.levels.setdefault(rid, {})[status.model] = Level.HOT

    def _book_failure(self, rid: int, status: ModelStatus) -> None:
        """UNAVAILABLE: failed there (with the reason); serving or loading: not failed."""
        failed = self.failed.setdefault(rid, {})
        name, reason = status.model, status.reason
        if status.state is not ModelState.UNAVAILABLE:
            if failed.pop(name, None) is not None:
                log.info("model %s serves again on replica %d", name, rid)
            return
        if failed.get(name) != reason:
            log.warning("model %s is unavailable on replica %d: %s", name, rid, reason)
        failed[name] = reason

    def woke(self, key: Key, level: Level, wake_s: float) -> None:
        """A wake the activator made and measured itself (a command engine's calls): awake
        there, and the wake booked as a replica's own measure, which the request that holds
        the member there takes (one that left before it ended has put the old level back)."""
        rid, member = key
        self.levels.setdefault(rid, {})[member] = Level.HOT
        self._woke[key] = (level, wake_s)

    def loaded(self, rid: int, member: str) -> None:
        """A load command answered: it serves there, awake."""
        self.failed.get(rid, {}).pop(member, None)
        self.levels.setdefault(rid, {})[member] = Level.HOT

    # ------------------------------------------------------------------ touches
    def command(self, key: Key) -> None:
        """A command for ``key`` is decided: in flight until :meth:`commanded`."""
        self.commanding[key] += 1
        self._commanded_at[key] = time.monotonic()

    def commanded(self, key: Key) -> None:
        """The command :meth:`command` counted has been answered (or failed)."""
        self.commanding[key] -= 1
        self._commanded_at[key] = time.monotonic()
        if not self.commanding[key]:
            del self.commanding[key]

    def claim(self, key: Key) -> Level | None:
        """A request holds a slot for ``key``: the level it finds there (None before the
        replica has said); the replica wakes it for the request, so the books say hot."""
        rid, member = key
        found = self.level(rid, member) if rid in self.seen else None
        self.levels.setdefault(rid, {})[member] = Level.HOT
        self.claims[key] += 1
        self.claim_counts[key] = self.claim_counts.get(key, 0) + 1
        self._claimed_at[key] = time.monotonic()
        self._woke.pop(key, None)  # a wake the replica tells from now on is this request's
        return found

    def unclaim(self, key: Key) -> tuple[Level, float] | None:
        """The request for ``key`` is over: the wake the replica measured for it, if it told."""
        self.claims[key] -= 1
        self._claimed_at[key] = time.monotonic()
        return self._woke.pop(key, None)

    def forget(self, rid: int) -> None:
        """A replica gone: its books go with it (its requests and commands are over)."""
        self.levels.pop(rid, None)
        self.failed.pop(rid, None)
        self.seen.discard(rid)
        for books in (self.claim_counts, self._commanded_at, self._claimed_at, self._woke):
            for key in [k for k in books if k[0] == rid]:
                del books[key]
        for key in [k for k, n in self.claims.items() if k[0] == rid and not n]:
            del self.claims[key]
