"""Sleep, wake and room: the :class:`Sleeper` a :class:`runtime.repository.ModelRepository` owns,
which puts its models to sleep, wakes them, and keeps the awake ones within the memory budgets.

A READY model can be put to sleep at a level (:mod:`runtime.sleep`): SLEEPING, it keeps its
handler and scheduler and still counts as serving, and a wake brings it back to READY. A failed
sleep or wake leaves it UNAVAILABLE, as a failed load does, which frees its memory as well.

Under a device memory budget (:mod:`runtime.budget`) a model that must wake or load first puts
the least recently used awake models to sleep (after their batches); one that loads past the
budget with no room to make sleeps right after its load. A model put to sleep for room sleeps at
``host`` within the host memory budget, the least recently used host sleepers going down to
``disk`` past it (:meth:`DeviceBudget.host_victims`). The callers hold the budget's lock.

:class:`Sleeper` is an object the repository owns, given what it works with and nothing more:
the entries (read, never added to), the budget, the metrics, and the repository's status setter
(which changes a model's state and tells it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Protocol

from contracts.replica import FailureKind, ModelState
from runtime.batching import Scheduler
from runtime.budget import DeviceBudget
from runtime.entries import ModelEntry, discard
from runtime.errors import InvalidInput, ModelNotReady
from runtime.handlers.base import HandlerLoadError, ModelHandler
from runtime.metrics import RuntimeMetrics
from runtime.sleep import SleepLevel
from runtime.status import failure_kind
from weight_cache import WeightCacheError

log = logging.getLogger("ember.runtime")


class Drains(Protocol):
    """A generation model's handler, as a sleep waits for its sequences."""

    def drain(self, timeout_s: float) -> bool: ...


class SetStatus(Protocol):
    """Change a model's state and tell it (the repository's ``_set``)."""

    def __call__(
        self,
        entry: ModelEntry,
        state: ModelState,
        reason: str,
        failure: FailureKind | None = None,
    ) -> None: ...


class Sleeper:
    """Sleep, wake and make room for the models of one :class:`runtime.repository.
    ModelRepository`, which owns it."""

    def __init__(
        self,
        entries: Mapping[str, ModelEntry],
        *,
        budget: DeviceBudget,
        metrics: RuntimeMetrics,
        set_status: SetStatus,
    ) -> None:
        self._entries = entries
        self.budget = budget
        self._metrics = metrics
        self._set = set_status

    async def fit_loaded(self, entry: ModelEntry, *, make_room: bool) -> None:
        """A model just loaded past the budget: make room for it, or put it to sleep."""
        if make_room:
            with contextlib.suppress(ModelNotReady):
                await self.make_room(entry)
                return
        log.info("model %s sleeps: past the device memory budget", entry.config.name)
        try:
            await self._put_away(entry)
        except InvalidInput:  # a handler that cannot sleep stays awake, over the budget
            log.warning("model %s cannot sleep: over the device memory budget", entry.config.name)

    async def make_room(self, entry: ModelEntry) -> None:
        """Put the least recently used awake models to sleep until ``entry`` fits (the caller
        holds the budget's lock); ModelNotReady when those that would have to cannot sleep."""
        name = entry.config.name
        can_sleep = {
            e.config.name
            for e in self._entries.values()
            if e is not entry and e.state is ModelState.READY and e.can_sleep
        }
        for victim in self.budget.victims(name, can_sleep=can_sleep):
            other = self._entries[victim]
            async with other.lock:
                if other.state is not ModelState.READY:
                    continue
                log.info("model %s sleeps to make room for %s", victim, name)
                # a failed sleep leaves it UNAVAILABLE, which frees its memory as well
                with contextlib.suppress(ModelNotReady):
                    await self._put_away(other, waking=entry)

    async def _put_away(self, entry: ModelEntry, *, waking: ModelEntry | None = None) -> None:
        """Put a READY model to sleep for room (the caller holds its lock): at the budget's
        level, within the host memory budget, the least recently used host sleepers going down
        to disk first; never ``waking``, the model it makes room for (whose lock is held too)."""
        name = entry.config.name
        keep = None if waking is None else waking.config.name
        for victim in self.budget.host_victims(name, waking=keep):
            await self._deepen(self._entries[victim])
        await self._sleep_locked(entry, self.budget.room_level(name))

    async def _deepen(self, entry: ModelEntry, why: str = "past the host memory budget") -> None:
        """Send a model asleep at level host down to level disk, past the host memory budget
        (its handler drops the host copy; no device memory is needed). A failure leaves it
        UNAVAILABLE, which frees its memory as well."""
        name = entry.config.name
        async with entry.lock:
            if entry.state is not ModelState.SLEEPING or entry.asleep is not SleepLevel.HOST:
                return
            assert entry.handler is not None and entry.handler.can_sleep
            log.info("model %s sleeps deeper (level disk): %s", name, why)
            started = time.perf_counter_ns()
            try:
                await asyncio.to_thread(entry.handler.sleep, SleepLevel.DISK)
            except Exception as exc:
                await self._fail_woken(entry, f"sleep failed: {type(exc).__name__}: {exc}", exc)
                return
            entry.asleep = SleepLevel.DISK
            self.budget.mark(name, hot=False)
            elapsed = time.perf_counter_ns() - started
            entry.stats.record_sleep(SleepLevel.DISK.value, elapsed)
            self._metrics.sleep_duration.labels(name, SleepLevel.DISK.value).observe(elapsed / 1e9)
            self._set(entry, ModelState.SLEEPING, f"level {SleepLevel.DISK}")

    async def sleep(
        self, entry: ModelEntry, level: SleepLevel, *, drain_timeout_s: float = 30.0
    ) -> None:
        """Put a serving model to sleep at ``level`` once its queued and running batches are done.

        Requests that come meanwhile wait for the sleep to end, then wake it.
        A model asleep at host asked for disk goes down without waking; one asleep at that level
        or deeper stays. At host, the host memory budget applies as to a sleep for room: the
        least recently used host sleepers go down to disk first, and a model larger than the
        whole host budget sleeps at disk.
        """
        name = entry.config.name
        async with self.budget.deciding():
            if entry.deferred:
                return  # not loaded yet: it holds nothing to put away
            if entry.state is ModelState.SLEEPING:
                if level is SleepLevel.DISK and entry.asleep is SleepLevel.HOST:
                    await self._deepen(entry, "asked to")
                return
            if level is SleepLevel.HOST:
                level = self.budget.room_level(name, asked=level)
                for victim in self.budget.host_victims(name, level=level):
                    await self._deepen(self._entries[victim])
            async with entry.lock:
                await self._sleep_locked(entry, level, drain_timeout_s=drain_timeout_s)

    async def _sleep_locked(
        self, entry: ModelEntry, level: SleepLevel, *, drain_timeout_s: float = 30.0
    ) -> None:
        """:meth:`sleep`, the caller holding the model's lock (and the budget's)."""
        name = entry.config.name
        if entry.state is ModelState.SLEEPING:
            return
        if entry.state is not ModelState.READY:
            raise ModelNotReady(
                f"model '{name}' cannot sleep: {entry.state.lower()} ({entry.reason})"
            )
        handler, scheduler = entry.handler, entry.scheduler
        if handler is None or not handler.can_sleep:
            raise InvalidInput(
                f"model '{name}' ({entry.config.handler} handler) cannot sleep; unload it "
                "without a level instead"
            )
        started = time.perf_counter_ns()
        self._set(entry, ModelState.SLEEPING, f"going to sleep: level {level}")
        entry.asleep = level
        busy = await self._drain(handler, scheduler, drain_timeout_s)
        if busy is not None:
            # putting its weights away now would fail what still runs, so it stays awake
            entry.asleep = None
            self._set(entry, ModelState.READY, "")
            raise ModelNotReady(
                f"model '{name}' is busy: its {busy} did not finish within "
                f"{drain_timeout_s:g}s, so it was not put to sleep"
            )
        try:
            await asyncio.to_thread(handler.sleep, level)
        except Exception as exc:
            # half put away: nothing it holds can be trusted to serve
            await self._fail_woken(entry, f"sleep failed: {type(exc).__name__}: {exc}", exc)
            raise ModelNotReady(f"model '{name}' failed to sleep: {exc}") from exc
        self.budget.mark(name, hot=False, at_host=level is SleepLevel.HOST)
        elapsed = time.perf_counter_ns() - started
        entry.stats.record_sleep(level.value, elapsed)
        self._metrics.sleep_duration.labels(name, level.value).observe(elapsed / 1e9)
        self._set(entry, ModelState.SLEEPING, f"level {level}")
        log.info("model %s asleep (level %s) in %.3fs", name, level, elapsed / 1e9)

    @staticmethod
    async def _drain(
        handler: ModelHandler, scheduler: Scheduler | None, timeout_s: float
    ) -> str | None:
        """Wait for what a model going to sleep runs: its batches (the scheduler admits nothing
        more from here and runs nothing until the wake resumes it), then a generation model's
        sequences, whose streams its sleep would otherwise cut short (a request for it waits
        for the sleep's end meanwhile: the model says SLEEPING). None once done; else what was
        still running when ``timeout_s`` passed, nothing left paused."""
        deadline = time.monotonic() + timeout_s
        if scheduler is not None and not await scheduler.pause(timeout_s):
            return "batches"
        if handler.generates:
            generator: Drains = handler  # type: ignore[assignment]  # declared by generates
            left = max(0.0, deadline - time.monotonic())
            if not await asyncio.to_thread(generator.drain, left):
                if scheduler is not None:
                    scheduler.resume()
                return "streams"
        return None

    async def wake(self, entry: ModelEntry) -> None:
        """Wake a SLEEPING model (the caller holds its lock); UNAVAILABLE if it cannot."""
        name, level = entry.config.name, entry.asleep
        assert entry.handler is not None and entry.handler.can_sleep and level is not None
        started = time.perf_counter_ns()
        self._set(entry, ModelState.SLEEPING, f"waking: level {level}")
        try:
            await asyncio.to_thread(entry.handler.wake)
        except Exception as exc:
            expected = isinstance(exc, HandlerLoadError | WeightCacheError)
            reason = str(exc) if expected else f"{type(exc).__name__}: {exc}"
            await self._fail_woken(entry, f"wake failed: {reason}", exc)
            log.error("model %s failed to wake: %s", name, reason, exc_info=not expected)
            raise ModelNotReady(f"model '{name}' failed to wake: {reason}") from exc
        elapsed = time.perf_counter_ns() - started
        entry.asleep = None
        if entry.scheduler is not None:
            entry.scheduler.resume()
        self.budget.mark(name, hot=True)
        entry.stats.record_wake(level.value, elapsed)
        self._metrics.wake_duration.labels(name, level.value).observe(elapsed / 1e9)
        entry.woke = (level, elapsed / 1e9)
        self._set(entry, ModelState.READY, "")
        log.info("model %s awake (from %s) in %.3fs", name, level, elapsed / 1e9)

    async def _fail_woken(self, entry: ModelEntry, reason: str, exc: Exception) -> None:
        await discard(entry.handler, entry.scheduler)
        entry.handler = entry.scheduler = None
        entry.asleep = None
        if entry.release_source is not None:
            entry.release_source()
            entry.release_source = None
        self.budget.mark(entry.config.name, hot=False)
        self._metrics.model_ready.labels(entry.config.name).set(0)
        self._set(entry, ModelState.UNAVAILABLE, reason, failure_kind(exc))
