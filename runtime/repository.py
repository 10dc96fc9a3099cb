"""The model repository: each configured model's lifecycle (load, warm up, serve, unload).

Loading runs in worker threads, so ``/v2/health/live`` answers while weights are read. A model is
READY only after its warm-up inference succeeded; a failed load leaves the model UNAVAILABLE with
the reason and the kind of failure, and the server keeps serving the others. Every change of a
model's state is also told to ``on_status`` (a :class:`contracts.replica.ModelStatus`): the
server writes it to its status channel, for the activator.

A READY model can also be put to sleep, and under a device memory budget the repository keeps the
awake models' footprints within it: that machinery is its :class:`runtime.sleeping.Sleeper`. A
SLEEPING model still counts as serving; :meth:`ModelRepository.awake_entry` (what a request goes
through) and :meth:`ModelRepository.load` wake it, room made first. At start the models past the
budget sleep right after their first load. Every load, wake and sleep, and every decision on
room, holds the budget's lock. A model's entry and states are :mod:`runtime.entries`.

With ``--load-on-demand`` (:meth:`ModelRepository.defer_loading`) the models are registered but
not loaded: SLEEPING ("level disk (not loaded yet)"), so they count as serving; the first request
for one, or a repository load, loads it as a wake would wake it, room made first under the budget.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from functools import partial

from contracts.proc import process_age_s
from contracts.replica import FailureKind, ModelState, ModelStatus, Ready, readiness
from contracts.stats import ModelStats
from runtime.batching import Paused, Scheduler
from runtime.budget import DeviceBudget, estimate_footprint
from runtime.config import ModelConfig
from runtime.entries import NOT_LOADED_YET, SERVING, ModelEntry, discard
from runtime.errors import (
    ConfigError,
    ModelNotFound,
    ModelNotReady,
    RuntimeServerError,
)
from runtime.handlers.base import (
    HandlerLoadError,
    ModelHandler,
    create_handler,
)
from runtime.metrics import RuntimeMetrics
from runtime.sleep import SleepLevel
from runtime.sleeping import Sleeper
from runtime.sources import WeightSources
from runtime.status import failure_kind
from runtime.tensors import Tensor
from weight_cache import WeightCacheError

__all__ = ["NOT_LOADED_YET", "SERVING", "ModelEntry", "ModelRepository", "ModelState"]

log = logging.getLogger("ember.runtime")


class ModelRepository:
    def __init__(
        self,
        configs: list[ModelConfig],
        metrics: RuntimeMetrics,
        sources: WeightSources,
        *,
        on_status: Callable[[ModelStatus], None] | None = None,
        budget: DeviceBudget | None = None,
    ) -> None:
        self._metrics = metrics
        self.budget = budget if budget is not None else DeviceBudget(None, metrics=metrics)
        self._sources = sources
        self._on_status = on_status
        self._loaded_once = False  # a load has ended (its ready line said the start-up's cost)
        self._starting = False  # the server's first loads are running (load_all)
        self.served = False  # every wanted model has served at once (the start is over)
        self._entries = {
            c.name: ModelEntry(config=c, stats=ModelStats(c.name, c.version)) for c in configs
        }
        self.sleeper = Sleeper(
            self._entries, budget=self.budget, metrics=metrics, set_status=self._set
        )

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def entry(self, name: str, version: str | None = None) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(name)
        if version is not None and version != entry.config.version:
            raise ModelNotFound(name, version)
        return entry

    def ready_entry(self, name: str, version: str | None = None) -> ModelEntry:
        """The model, if it can serve (READY, or SLEEPING: a request wakes it)."""
        entry = self.entry(name, version)
        if entry.state not in SERVING:
            raise ModelNotReady(
                f"model '{name}' is not ready: {entry.state.lower()} ({entry.reason})"
            )
        return entry

    def _set(
        self,
        entry: ModelEntry,
        state: ModelState,
        reason: str,
        failure: FailureKind | None = None,
    ) -> None:
        entry.state, entry.reason, entry.failure = state, reason, failure
        if not self.served:
            wanted = [e for e in self._entries.values() if e.wanted]
            statuses = {e.config.name: e.status() for e in wanted}
            self.served = bool(wanted) and isinstance(readiness(statuses, list(statuses)), Ready)
        if self._on_status is not None:
            self._on_status(entry.status())
        entry.woke = None  # a wake is told once, by the READY that ends it

    async def awake_entry(self, name: str, version: str | None = None) -> ModelEntry:
        """The model, READY: woken first if it sleeps. No await lies between the last check and
        the return, so a caller that submits at once is in the queue a sleep drains."""
        entry = self.ready_entry(name, version)
        self.budget.touch(name)
        while entry.state is not ModelState.READY:
            if entry.state is not ModelState.SLEEPING:
                self.ready_entry(name, version)  # raises, saying why
            await self._wake_for_request(entry)
        return entry

    async def infer(
        self,
        name: str,
        version: str | None,
        inputs: dict[str, Tensor],
        *,
        arrived_ns: int | None = None,
        request_id: str | None = None,
    ) -> tuple[ModelEntry, dict[str, Tensor]]:
        """Run one request on the model, woken first if it sleeps; the entry it ran on and its
        outputs. A model that goes to sleep between the wake and the submit is woken again."""
        while True:
            entry = await self.awake_entry(name, version)
            assert entry.scheduler is not None
            try:
                return entry, await entry.scheduler.submit(
                    inputs, arrived_ns=arrived_ns, request_id=request_id
                )
            except Paused:
                continue

    async def loaded_entry(self, name: str, version: str | None = None) -> ModelEntry:
        """The serving model, its handler loaded: loaded first if it is not loaded yet
        (``--load-on-demand``); a sleeper is not woken."""
        entry = self.ready_entry(name, version)
        if entry.deferred:
            entry = await self.awake_entry(name, version)
        return entry

    async def _wake_for_request(self, entry: ModelEntry) -> None:
        """Wake a SLEEPING model for a request: never a full load (an operator's unload stands,
        and a failed wake is not retried by every queued request), except the first load of a
        model registered to load on demand; ModelNotReady if it is neither asleep nor ready by
        the time the locks are held."""
        async with self.budget.deciding(), entry.lock:
            if entry.state is ModelState.SLEEPING and entry.deferred:
                await self._load(entry, make_room=True)
            elif entry.state is ModelState.SLEEPING:
                await self.sleeper.make_room(entry)
                await self.sleeper.wake(entry)
            if entry.state not in SERVING:
                name = entry.config.name
                raise ModelNotReady(
                    f"model '{name}' is not ready: {entry.state.lower()} ({entry.reason})"
                )

    def announce_loading(self) -> None:
        """The wanted models that have not begun to load say they are loading: the server
        loads them next (after what comes first at start), and a request meanwhile is told so."""
        for entry in self._entries.values():
            if entry.wanted and entry.state is ModelState.UNAVAILABLE and entry.handler is None:
                self._set(entry, ModelState.LOADING, "loading")

    def defer_loading(self) -> None:
        """Register the wanted models that have not begun to load without loading them
        (``--load-on-demand``): SLEEPING, as if at level disk, so that they count as serving."""
        for entry in self._entries.values():
            if entry.wanted and entry.state is ModelState.UNAVAILABLE and entry.handler is None:
                entry.deferred = True
                self._set(entry, ModelState.SLEEPING, NOT_LOADED_YET)

    def all_ready(self) -> bool:
        """Until the start is over, every wanted model serves. Once every model has either served
        or failed (and one serves), the server is ready while one of them serves: a model
        loading on demand, waking, or whose wake or load failed leaves the others serving (a
        group's replica), and the failed one answers its requests with why."""
        wanted = [e for e in self._entries.values() if e.wanted]
        if not wanted or all(e.state in SERVING for e in wanted):
            return True
        return self.served and any(e.state in SERVING for e in wanted)

    async def load(self, name: str, *, make_room: bool = True) -> ModelEntry:
        """Load (or reload, or wake) a model; concurrent calls for one model share a single load.

        Under a budget, the least recently used awake models sleep to make room for it; with
        ``make_room`` False (at start) it is the one put to sleep if it does not fit.
        """
        entry = self.entry(name)
        entry.wanted = True
        async with self.budget.deciding(), entry.lock:
            if entry.state is ModelState.READY:
                return entry
            if entry.state is ModelState.SLEEPING and not entry.deferred:
                await self.sleeper.make_room(entry)
                await self.sleeper.wake(entry)
                return entry
            await self._load(entry, make_room=make_room)
            return entry

    async def _load(self, entry: ModelEntry, *, make_room: bool) -> None:
        """:meth:`load`'s full load, the caller holding the budget's and the model's locks."""
        name = entry.config.name
        if entry.deferred:
            # room first, by the size of its files; no room now (the others busy): it stays
            # registered, and the next request tries again
            if self.budget.footprint(name) is None and self.budget.limit is not None:
                estimate = await asyncio.to_thread(estimate_footprint, entry.config)
                if estimate is not None:
                    self.budget.estimate(name, estimate)
            if self.budget.footprint(name) is not None:
                await self.sleeper.make_room(entry)
            entry.deferred = False
        self._set(entry, ModelState.LOADING, "loading")
        started = time.perf_counter()
        # the process's first load: what its start-up cost (the interpreter, torch and the
        # server's imports, the device probe) is part of the wait, said in the ready line
        startup_s = process_age_s() if self._starting and not self._loaded_once else None
        handler: ModelHandler | None = None
        scheduler: Scheduler | None = None
        release_source: Callable[[], None] | None = None
        try:
            if self.budget.footprint(name) is not None:  # known from an earlier load
                await self.sleeper.make_room(entry)
            local = await self._sources.localize(entry.config)
            release_source = local.release
            phases = dict(local.phases)
            mark = time.perf_counter()
            handler = await asyncio.to_thread(create_handler, local.config)  # its imports
            phases["imports"] = phases.get("imports", 0.0) + time.perf_counter() - mark
            mark = time.perf_counter()
            # the handler becomes the only holder of the streamed tensors
            await asyncio.to_thread(partial(handler.load, tensors=local.take_tensors()))
            phases["load"] = time.perf_counter() - mark
            footprint = handler.device_bytes() if handler.measures else 0
            self.budget.measured(name, footprint)
            scheduler = Scheduler(
                config=entry.config, handler=handler, stats=entry.stats, metrics=self._metrics
            )
            mark = time.perf_counter()
            warm = handler.warmup_inputs() if entry.config.warmup else None
            if warm is not None:
                await scheduler.run_now(warm)
            phases["warmup"] = time.perf_counter() - mark
            scheduler.start()
        except BaseException as exc:
            await discard(handler, scheduler)
            if release_source is not None:
                release_source()
            expected = isinstance(
                exc, HandlerLoadError | ConfigError | RuntimeServerError | WeightCacheError
            )
            reason = str(exc) if expected else f"{type(exc).__name__}: {exc}"
            failed = isinstance(exc, Exception | SystemExit)  # not cancellation, Ctrl-C
            failure = failure_kind(exc) if failed else None
            self._set(entry, ModelState.UNAVAILABLE, f"load failed: {reason}", failure)
            if not failed:
                raise  # not the model's fault
            log.error("model %s failed to load: %s", name, reason, exc_info=not expected)
            raise ModelNotReady(f"model '{name}' failed to load: {reason}") from exc
        entry.handler, entry.scheduler = handler, scheduler
        entry.release_source = release_source
        # The imports and the model are long-lived: keep the collector from re-walking them
        # on every full collection, which otherwise shows up as tail latency under load.
        gc.freeze()
        entry.load_seconds = time.perf_counter() - started
        entry.load_phases = phases
        self._set(entry, ModelState.READY, "")
        self._metrics.load_duration.labels(name).set(entry.load_seconds)
        for phase, seconds in phases.items():
            self._metrics.load_phase.labels(name, phase).set(seconds)
        self._metrics.model_ready.labels(name).set(1)
        detail = ", ".join(f"{k} {v:.2f}s" for k, v in phases.items())
        other = entry.load_seconds - sum(phases.values())
        if other >= 0.01:  # what no phase timed (making room, the handoffs): so they add up
            detail += f", other {other:.2f}s"
        if startup_s is not None:
            log.info(
                "model %s ready in %.2fs since the process started: start-up %.2fs "
                "(interpreter, imports, server) + load %.2fs (%s)",
                name,
                startup_s + entry.load_seconds,
                startup_s,
                entry.load_seconds,
                detail,
            )
        else:
            log.info("model %s ready in %.2fs (%s)", name, entry.load_seconds, detail)
        self._loaded_once = True
        self.budget.mark(name, hot=True)
        if not self.budget.fits(name):
            await self.sleeper.fit_loaded(entry, make_room=make_room)

    async def sleep(self, name: str, level: SleepLevel, *, drain_timeout_s: float = 30.0) -> None:
        """Put a serving model to sleep at ``level`` once its batches are done (its
        :class:`~runtime.sleeping.Sleeper` says how)."""
        await self.sleeper.sleep(self.entry(name), level, drain_timeout_s=drain_timeout_s)

    async def unload(self, name: str) -> None:
        """Stop admitting requests, answer those not yet running with a retryable 503 at once,
        let the running batches finish, then release the model."""
        entry = self.entry(name)
        entry.wanted = False
        async with self.budget.deciding(), entry.lock:
            if entry.state not in SERVING:
                return
            entry.asleep, entry.deferred = None, False
            self._set(entry, ModelState.UNLOADING, "unloading")
            self._metrics.model_ready.labels(name).set(0)
            await discard(entry.handler, entry.scheduler)
            entry.handler = entry.scheduler = None
            self.budget.mark(name, hot=False)
            if entry.release_source is not None:
                entry.release_source()  # the tier may evict the files now
                entry.release_source = None
            gc.unfreeze()  # let the collector reclaim the model's cycles; the next load refreezes
            self._set(entry, ModelState.UNAVAILABLE, "unloaded")

    async def load_all(self) -> None:
        """Load every wanted model: side by side, or, under a budget, one at a time in config
        order, each that does not fit beside the ones before put to sleep once loaded."""
        wanted = [n for n, e in self._entries.items() if e.wanted]
        self._starting = True  # these loads are the start's: their ready lines count it
        results: list[object]
        if self.budget.limit is None:
            results = await asyncio.gather(*(self.load(n) for n in wanted), return_exceptions=True)
        else:
            results = []
            for n in wanted:
                try:
                    results.append(await self.load(n, make_room=False))
                except Exception as exc:
                    results.append(exc)
        self._starting = False
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result

    async def drain(self, timeout_s: float) -> None:
        await asyncio.gather(
            *(e.scheduler.drain(timeout_s) for e in self._entries.values() if e.scheduler)
        )

    async def aclose(self) -> None:
        for name in list(self._entries):
            await self.unload(name)
