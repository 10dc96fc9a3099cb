"""A model's replicas through their lives, and the model state that follows from them.

Replicas are ``starting``, ``ready``, ``checking`` (a request to it broke off: nothing is routed to
it until a health check passes) or ``draining``. The model is ``ready`` when one replica is, else
``starting``, else ``draining``, else ``zero``. A replica that exits on its own is removed and
``on_lost`` told (the pool replaces it if anyone waits); one that cannot start is removed and,
when no other is on its way, ``on_failed`` gets the error its waiters answer with; one that is
ready is told to ``on_ready``.

What a person watching ``ember up`` needs is logged at INFO, one line each: a start and why (a
model woken, or scaled up), the replica's process up, its model ready with the total time and
the load's phases (the replica reports them with its ``READY``, so they are logged then, not as
each ends), a failed start, a crash, and the model back at zero with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from activator.errors import ActivatorError
from activator.events import EventLog
from activator.metrics import ActivatorMetrics
from activator.pool.clock import Clock
from activator.pool.failures import FailedStart
from activator.scalers.base import ReplicaHandle, Scaler
from activator.states import PoolState, ReplicaState
from activator.tasks import TaskSet
from contracts.events import ReplicaReady, ReplicaStarting, ReplicaStopped, State
from contracts.stack import ModelSpec

log = logging.getLogger("ember.activator")
_ids = itertools.count(1)
ZERO_REASON = "scaled to zero: a request wakes it"


@dataclass(eq=False)
class Replica:
    id: int
    started: float  # the pool clock's monotonic time
    state: ReplicaState = ReplicaState.STARTING
    handle: ReplicaHandle | None = None
    in_flight: int = 0
    ready_at: float | None = None
    idle_since: float = 0.0
    stop_requested: bool = False
    stop_reason: str = ""  # why it was drained, for the log (its event has the short reason)
    task: asyncio.Task[None] | None = None
    drain_task: asyncio.Task[None] | None = None
    check_task: asyncio.Task[None] | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.handle is not None
        return self.handle.url


class ReplicaSet:
    def __init__(
        self,
        spec: ModelSpec,
        scaler: Scaler,
        events: EventLog,
        metrics: ActivatorMetrics,
        *,
        clock: Clock,
        tasks: TaskSet,
        grace_period_s: float,
        on_free: Callable[[], None],
        on_lost: Callable[[], None],
        on_failed: Callable[[ActivatorError], None],
        on_ready: Callable[[Replica], None] | None = None,
    ) -> None:
        self.spec, self.name = spec, spec.name
        self.scaler, self.events, self.metrics = scaler, events, metrics
        self.clock, self.tasks = clock, tasks
        self.grace_period_s = grace_period_s
        self.on_free, self.on_lost, self.on_failed = on_free, on_lost, on_failed
        self.on_ready = on_ready
        self.members: list[Replica] = []
        self.state = PoolState.ZERO
        self.reason = ZERO_REASON
        self.start_failed = False  # the last start failed (reason says why); cleared when ready
        self.last_cold_start_s: float | None = None  # the last replica's, start to ready
        self._limit = spec.container_concurrency
        self._last_stop = ""  # why the last replica to go went, for the scale-to-zero line

    # ------------------------------------------------------------------ slots
    def claim(self, prefer: Callable[[Replica], bool] | None = None) -> Replica | None:
        """A slot on the least busy ready replica with one free (its in_flight counts it);
        ``prefer``: the replicas to pick first, when one of them has a free slot (a group's
        replicas where the model is awake)."""
        best: Replica | None = None
        limit = self._limit
        for r in self.members:
            free = r.state is ReplicaState.READY and r.in_flight < limit
            if free and (best is None or r.in_flight < best.in_flight):
                best = r
        if prefer is not None and best is not None and not prefer(best):
            preferred = [
                r
                for r in self.members
                if r.state is ReplicaState.READY and r.in_flight < limit and prefer(r)
            ]
            if preferred:
                best = min(preferred, key=lambda r: r.in_flight)
        if best is not None:
            best.in_flight += 1
        return best

    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.members)

    def active(self) -> int:
        """Replicas starting or ready (not checking, not draining)."""
        return sum(r.state in (ReplicaState.STARTING, ReplicaState.READY) for r in self.members)

    # ------------------------------------------------------------------ start
    def start(self, count: int, why: str = "") -> None:
        """Start ``count`` more replicas (none when it is not positive); ``why``: for the log
        (a request, a warm window, min_replicas)."""
        for _ in range(count):
            now = self.clock.monotonic()
            waking = self.active() == 0
            replica = Replica(next(_ids), started=now, idle_since=now)
            self.members.append(replica)
            self.metrics.cold_starts.labels(self.name).inc()
            self.events.emit(
                ReplicaStarting(
                    model=self.name,
                    replica=replica.id,
                    gpu_type=self.spec.gpu_type,
                    price_per_hour=self.spec.price_per_hour,
                    cpus=self.spec.cpus,
                    why=why,
                )
            )
            log.info(
                "model %s: %s (%s): replica %d starting",
                self.name,
                "waking" if waking else "scaling up",
                why or "asked",
                replica.id,
            )
            replica.task = self.tasks.spawn(
                self._run(replica), name=f"replica-{self.name}-{replica.id}"
            )
        self.update_state()

    async def _run(self, replica: Replica) -> None:
        """Start, watch and finally forget one replica."""
        started = self.clock.monotonic()
        try:
            replica.handle = await self.scaler.start(self.spec)
            log.info(
                "model %s: replica %d up in %.2fs%s; loading",
                self.name,
                replica.id,
                self.clock.monotonic() - started,
                " (a warm-pool process)" if replica.handle.warm else "",
            )
            await self.scaler.wait_ready(replica.handle, self.spec.startup_timeout_s)
        except Exception as exc:
            await self._failed(replica, FailedStart.of(exc))
            return
        if replica.stop_requested:  # drained while it started: the drain stops it
            return
        replica.state = ReplicaState.READY
        replica.ready_at = replica.idle_since = self.clock.monotonic()
        cold_start_s = replica.ready_at - started
        self.last_cold_start_s = cold_start_s
        self.metrics.cold_start_seconds.labels(self.name).observe(cold_start_s)
        self.events.emit(
            ReplicaReady(
                model=self.name,
                replica=replica.id,
                url=replica.url,
                cold_start_s=cold_start_s,
                phases=dict(replica.handle.timings),
                warm_pool=replica.handle.warm,
            )
        )
        log.info(
            "model %s: replica %d ready in %.2fs%s",
            self.name,
            replica.id,
            cold_start_s,
            _ready_detail(cold_start_s, replica.handle.timings),
        )
        self.reason = ""
        self.start_failed = False
        self.update_state()
        if self.on_ready is not None:
            self.on_ready(replica)
        self.on_free()
        reason = await self.scaler.wait_exit(replica.handle)
        if replica.stop_requested:
            return
        # it went away on its own: its in-flight requests fail (the proxy sees the connection
        # drop and answers 502); queued ones wait for a replacement
        log.warning("model %s: replica %d crashed: %s", self.name, replica.id, reason)
        self._remove(replica, f"crashed: {reason}")
        self.reason = f"a replica crashed ({reason})"
        self.on_lost()

    async def _failed(self, replica: Replica, failed: FailedStart) -> None:
        log.error("model %s: replica %d failed to start: %s", self.name, replica.id, failed.reason)
        self.events.emit(failed.event(self.name, replica.id))
        if replica in self.members:
            self.members.remove(replica)
        self.reason = f"the last start failed: {failed.reason}"
        self.start_failed = True
        # its waiters hear now, not after the stop below (a failed load reaches them in seconds)
        if not self.active():
            self.on_failed(failed.error(self.name))
        self.update_state()
        if replica.handle is not None:
            with contextlib.suppress(Exception):
                await self.scaler.stop(replica.handle, 0)

    # ------------------------------------------------------------------ health
    def suspect(self, replica: Replica) -> None:
        """A request to ``replica`` broke off: route nothing to it until it passes a check."""
        if replica.state is not ReplicaState.READY or replica.stop_requested:
            return
        replica.state = ReplicaState.CHECKING
        self.update_state()
        replica.check_task = self.tasks.spawn(
            self._check(replica), name=f"check-{self.name}-{replica.id}"
        )

    async def _check(self, replica: Replica) -> None:
        assert replica.handle is not None
        healthy = await self.scaler.healthy(replica.handle)
        if not healthy:  # dead or dying: give its exit a moment to be seen (and logged) as such
            for _ in range(20):
                if replica not in self.members:
                    break
                await self.clock.sleep(0.05)
        if replica not in self.members or replica.stop_requested:
            return  # it exited meanwhile (and was replaced), or is being stopped
        if healthy:
            replica.state = ReplicaState.READY
            self.update_state()
            self.on_free()
        else:
            self.drain(replica, "unhealthy after a dropped request")
            self.on_lost()

    # ------------------------------------------------------------------ stop
    def drain(self, replica: Replica, reason: str, detail: str = "") -> None:
        """No new work for ``replica``; stop it once its requests finish (or the grace ends).

        ``reason`` goes into its ``replica_stopped`` event; ``detail`` only into the log.
        """
        if self._mark_draining(replica):
            replica.stop_reason = f"{reason} ({detail})" if detail else reason
            replica.drain_task = self.tasks.spawn(
                self._drain(replica, reason), name=f"drain-{self.name}-{replica.id}"
            )

    async def stop_all(self, reason: str) -> None:
        """Drain every replica and wait until all are stopped (the caller's own task runs the
        drains not begun yet: this works while the task set is closing)."""
        own = [self._drain(r, reason) for r in list(self.members) if self._mark_draining(r)]
        begun = [r.drain_task for r in self.members if r.drain_task is not None]
        await asyncio.gather(*own, *begun, return_exceptions=True)

    def _mark_draining(self, replica: Replica) -> bool:
        if replica.stop_requested or replica not in self.members:
            return False
        replica.state = ReplicaState.DRAINING
        replica.stop_requested = True
        self.update_state()
        return True

    async def _drain(self, replica: Replica, reason: str) -> None:
        clock = self.clock
        deadline = clock.monotonic() + self.grace_period_s
        while replica.in_flight and clock.monotonic() < deadline:
            replica.idle.clear()
            with contextlib.suppress(TimeoutError):
                await clock.wait_for(replica.idle.wait(), deadline - clock.monotonic())
        if replica.handle is not None:
            await self.scaler.stop(replica.handle, self.grace_period_s)
        elif replica.task is not None:  # still starting: stop the start
            replica.task.cancel()
            await asyncio.wait((replica.task,))
            if replica.handle is not None:
                await self.scaler.stop(replica.handle, 0)
        self._remove(replica, reason)

    def _remove(self, replica: Replica, reason: str) -> None:
        if replica in self.members:
            self.members.remove(replica)
            self._last_stop = replica.stop_reason or reason
            uptime = self.clock.monotonic() - replica.started
            self.events.emit(
                ReplicaStopped(model=self.name, replica=replica.id, reason=reason, uptime_s=uptime)
            )
        self.update_state()

    # ------------------------------------------------------------------ model state
    def update_state(self) -> None:
        states = {r.state for r in self.members}
        if ReplicaState.READY in states:
            new = PoolState.READY
        elif ReplicaState.STARTING in states:
            new = PoolState.STARTING
        elif ReplicaState.DRAINING in states:
            new = PoolState.DRAINING
        else:
            new = PoolState.ZERO
        if new != self.state:
            old, self.state = self.state, new
            self.events.emit(State(model=self.name, from_=old, to=new))
            if new is PoolState.ZERO and not self.start_failed:
                self.reason = ZERO_REASON
                log.info("model %s: scaled to zero: %s", self.name, self._last_stop or "stopped")


# the scaler's timings that add up to a start (the rest are the replica's own, within the last)
_SPANS = (("process_start", "process start"), ("until_ready", "until ready"))


def _ready_detail(total_s: float, timings: dict[str, float]) -> str:
    """A start's time said so that it adds up: the spans the scaler timed one after the other
    (and what fell between them), then the replica's own phases within the last."""
    timings = dict(timings)
    spans = [(label, timings.pop(key)) for key, label in _SPANS if key in timings]
    inner = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
    if not spans:
        return f" ({inner})" if inner else ""
    other = total_s - sum(v for _, v in spans)
    if other >= 0.01:
        spans.append(("handoffs", other))
    said = ": " + " + ".join(f"{label} {v:.2f}s" for label, v in spans)
    return said + (f" (the replica's: {inner})" if inner else "")
