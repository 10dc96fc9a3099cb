"""The ranged-read pipeline: a plan of byte ranges read by a pool of threads, announced in order.

A plan is a plain list of :class:`Range` items (offset, length). ``land`` reads one range into
where it goes (a mapping of the tier file, a staging slot bound for a device, ...) and runs in
the pool, ``concurrency`` ranges at a time with a second round queued; ``arrived`` runs in the
calling thread, in plan order, as each range has landed. The first failure, or ``cancel`` being
set, stops every thread after its current range. What lands where, and what is verified, is the
caller's: :func:`weight_cache.streaming.stream_ranges` for a fetch from a store,
:func:`weight_cache.device_load.load_to_device` for a local file onto a device.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

__all__ = ["Range", "Stopped", "plan_ranges", "read_ranges"]


@dataclass(frozen=True, slots=True)
class Range:
    """``length`` bytes of an object from ``offset``."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        """The offset just past the range."""
        return self.offset + self.length


class Stopped(Exception):
    """The read was cancelled (or another range failed): stop before the next range."""


def plan_ranges(size: int, range_bytes: int) -> list[Range]:
    """``size`` bytes cut into ranges of ``range_bytes`` (the last one shorter)."""
    if range_bytes <= 0:
        raise ValueError(f"range_bytes must be positive, not {range_bytes}")
    return [Range(at, min(range_bytes, size - at)) for at in range(0, size, range_bytes)]


def read_ranges(
    plan: Iterable[Range],
    land: Callable[[Range], None],
    *,
    concurrency: int,
    cancel: threading.Event,
    arrived: Callable[[Range], None] | None = None,
) -> None:
    """Land every range of ``plan``, ``concurrency`` at a time; tell ``arrived`` in plan order.

    Blocking. ``land`` raising (or ``cancel`` set) sets ``cancel``, drops the ranges not yet
    started and raises here once the pool is done; :class:`Stopped` is what a cancelled
    range raises.
    """
    ranges = iter(plan)
    pending: deque[tuple[Range, Future[None]]] = deque()

    def landing(item: Range) -> None:
        if cancel.is_set():
            raise Stopped
        land(item)

    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="ember-fetch") as pool:

        def submit() -> None:
            item = next(ranges, None)
            if item is not None:
                pending.append((item, pool.submit(landing, item)))

        for _ in range(2 * max(1, concurrency)):  # a second round queued keeps every thread busy
            submit()
        try:
            while pending:
                item, future = pending[0]
                _wait(future, cancel)
                pending.popleft()
                if arrived is not None:
                    arrived(item)
                submit()
        except BaseException:
            cancel.set()
            for _, future in pending:
                future.cancel()
            raise


def _wait(future: Future[None], cancel: threading.Event) -> None:
    while True:
        try:
            future.result(timeout=0.25)
            return
        except TimeoutError:
            if cancel.is_set():
                raise Stopped from None
