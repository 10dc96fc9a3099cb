"""The relayed requests' deadlines: ``request_timeout_s`` after each was sent to its replica.

Every request a replica holds has the same timeout, so the one sent first is the first due: the
deadlines are kept in the order they were set (a dict used as an ordered set), and one loop timer
is armed for the first. A relay that ends takes its deadline out; one that is due is told
(:meth:`Due.timed_out`) and taken out. Setting a deadline costs no timer of its own: a timer is
armed only when none is (so at most one per ``request_timeout_s`` under steady traffic), and when
it fires for a deadline already gone it is armed again for the next one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Due(Protocol):
    """What has a deadline here (:class:`activator.relay.Relay`)."""

    deadline: float  # monotonic

    def timed_out(self, timeout_s: float) -> None: ...


class Deadlines:
    """Deadlines ``timeout_s`` after they are set, first set first due."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._due: dict[Due, None] = {}  # in the order they were set: the first is due first
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, item: Due) -> None:
        """Start ``item``'s clock (its ``deadline``); an item is added once until it is taken
        out (:meth:`discard`, or timed out)."""
        item.deadline = time.monotonic() + self.timeout_s
        self._due[item] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._fire)

    def discard(self, item: Due) -> None:
        self._due.pop(item, None)

    def _fire(self) -> None:
        self._timer = None
        now = time.monotonic()
        late = []
        for item in self._due:
            if item.deadline > now:
                self._timer = asyncio.get_running_loop().call_later(item.deadline - now, self._fire)
                break
            late.append(item)
        for item in late:  # taken out first: a timed-out item ends, and may set a new deadline
            del self._due[item]
        for item in late:
            item.timed_out(self.timeout_s)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()
