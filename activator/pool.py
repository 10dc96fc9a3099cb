"""One model's replicas, its bounded queue, and the policy that scales it to zero and back.

Model states: ``zero`` (no replica) -> ``starting`` (one is loading) -> ``ready`` (one answers)
-> ``draining`` (the last ones finish their work before they stop) -> ``zero``. Replicas are
``starting``, ``ready``, ``checking`` (a request to it broke off: nothing is routed to it until a
health check passes) or ``draining``.

A request takes a *slot* on a ready replica (at most ``container_concurrency`` per replica). With
no free slot it waits in a FIFO queue bounded by ``queue_size`` (past it: 503 + Retry-After) until
its deadline (then 504). Demand (in flight + queued) over ``target`` per replica starts replicas,
up to ``max_replicas``, one start per missing replica however many requests arrive (single
flight). A slot freed or a replica ready hands the queue's head on, in order. Replicas beyond
demand, and finally the last one, are drained and stopped after ``keep_alive_s`` without need;
``min_replicas`` and warm windows (admin API, pre-warm) hold a floor. A replica that exits on its
own is replaced if anyone is waiting; its in-flight requests fail with 502 (the proxy sees the
connection drop). A replica that cannot start fails its waiters with 503 and a reason, or 504 when
it is not ready within ``startup_timeout_s``; the model goes back to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from activator.errors import (
    ActivatorError,
    DeadlineExceeded,
    ModelUnavailable,
    QueueFull,
    ShuttingDown,
)
from activator.events import EventLog
from activator.metrics import ActivatorMetrics
from activator.policy import Decision, Fixed, History, Policy, parse_policy
from activator.scalers.base import ReplicaHandle, Scaler
from contracts.stack import ModelSpec

log = logging.getLogger("ember.activator")
_ids = itertools.count(1)


@dataclass(eq=False)
class Replica:
    id: int
    state: str = "starting"  # starting | ready | draining
    handle: ReplicaHandle | None = None
    in_flight: int = 0
    started: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    idle_since: float = field(default_factory=time.monotonic)
    stop_requested: bool = False
    task: asyncio.Task[None] | None = None
    drain_task: asyncio.Task[None] | None = None
    check_task: asyncio.Task[None] | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.handle is not None
        return self.handle.url


@dataclass(eq=False)
class Waiter:
    future: asyncio.Future[Replica]
    arrival: float
    deadline: float


@dataclass
class Ticket:
    """A request's claim on a replica slot; give it back with :meth:`ModelPool.release`."""

    replica: Replica
    queued_s: float
    cold: bool


class ModelPool:
    def __init__(
        self,
        spec: ModelSpec,
        scaler: Scaler,
        events: EventLog,
        metrics: ActivatorMetrics,
        *,
        grace_period_s: float = 30.0,
        tick_s: float = 0.1,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.scaler = scaler
        self.events = events
        self.metrics = metrics
        self.grace_period_s = grace_period_s
        self.tick_s = tick_s
        self.replicas: list[Replica] = []
        self.waiters: deque[Waiter] = deque()
        self.state = "zero"
        self.reason = "scaled to zero: a request wakes it"
        self.start_failed = False  # the last start failed (reason says why); cleared when ready
        self.warm_until = 0.0  # monotonic; a warm window holds warm_replicas until then
        self.warm_replicas = 0
        self.last_request = time.monotonic()
        self.closing = False
        self._wake = asyncio.Event()
        self.counters: dict[int, Any] = {}  # the requests counter's children, by status
        self.windows = list(spec.prewarm)
        self._applied: set[tuple[int, dt.datetime]] = set()
        self.policy: Policy = (
            Fixed(spec.keep_alive_s) if spec.policy == "fixed" else parse_policy(spec.policy)
        )
        self.history = History()  # arrival times (wall clock), bursts coalesced to 1 s
        self.keep_alive_s = spec.keep_alive_s
        self._decided_at = -1  # len(history.idle_times) when the policy last decided
        self._last_decision: Decision | None = None
        self._prewarm_timer: asyncio.TimerHandle | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self.queue_hist: Any = None
        self._controller: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._controller = asyncio.create_task(self._control(), name=f"pool-{self.name}")
        if self.windows:
            self._scheduler = asyncio.create_task(self._schedule(), name=f"prewarm-{self.name}")

    async def aclose(self) -> None:
        """Stop taking requests, fail the queued ones, drain and stop every replica."""
        self.refuse_waiters()
        if self._prewarm_timer is not None:
            self._prewarm_timer.cancel()
        for task in (self._controller, self._scheduler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for replica in list(self.replicas):
            self._begin_drain(replica, "activator shutting down")
        drains = [r.drain_task for r in list(self.replicas) if r.drain_task is not None]
        await asyncio.gather(*drains, return_exceptions=True)

    def refuse_waiters(self) -> None:
        """Stop taking requests; the queued ones get 503 (ShuttingDown) now."""
        self.closing = True
        for w in list(self.waiters):
            if not w.future.done():
                w.future.set_exception(ShuttingDown("the activator is shutting down"))
        self.waiters.clear()

    @property
    def queued(self) -> int:
        return len(self.waiters)

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    # ------------------------------------------------------------------ requests
    def try_acquire(self) -> Ticket | None:
        """A slot now, if a ready replica has one and nobody is queued before us."""
        if self.closing:
            raise ShuttingDown("the activator is shutting down")
        self.last_request = time.monotonic()
        arrival = time.time()
        if self.history.last is None or arrival - self.history.last >= 1.0:
            self.history.observe(arrival)
        if self.waiters:
            return None
        replica = self._free_replica()
        if replica is None:
            return None
        replica.in_flight += 1
        return Ticket(replica, 0.0, False)

    async def acquire(self, deadline_s: float | None = None) -> Ticket:
        """A slot on a ready replica, waiting in the queue (and waking the model) if need be."""
        ticket = self.try_acquire()
        if ticket is not None:
            return ticket
        now = time.monotonic()
        if len(self.waiters) >= self.spec.queue_size:
            raise QueueFull(
                f"model '{self.name}': pending request queue full ({self.spec.queue_size})"
            )
        timeout = self.spec.deadline_s if deadline_s is None else deadline_s
        waiter = Waiter(asyncio.get_running_loop().create_future(), now, now + timeout)
        cold = not any(r.state == "ready" for r in self.replicas)
        self.waiters.append(waiter)
        self._scale()
        try:
            replica = await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except TimeoutError:
            self._forget(waiter)
            handed = waiter.future.done() and not waiter.future.cancelled()
            if handed and waiter.future.exception() is None:  # a slot just as time ran out
                return Ticket(waiter.future.result(), time.monotonic() - now, cold)
            raise DeadlineExceeded(
                f"model '{self.name}': no replica was ready within the request's "
                f"{timeout:g}s deadline ({self.reason})"
            ) from None
        except asyncio.CancelledError:  # the client went away while queued
            self._forget(waiter)
            if waiter.future.done() and not waiter.future.cancelled():
                if waiter.future.exception() is None:
                    self.release_replica(waiter.future.result())
            else:
                waiter.future.cancel()
            raise
        return Ticket(replica, time.monotonic() - now, cold)

    def release(self, ticket: Ticket) -> None:
        self.release_replica(ticket.replica)

    def release_replica(self, replica: Replica) -> None:
        replica.in_flight -= 1
        if replica.in_flight == 0:
            replica.idle_since = time.monotonic()
            replica.idle.set()
        self._dispatch()

    def _forget(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def _free_replica(self) -> Replica | None:
        best: Replica | None = None
        for r in self.replicas:
            free = r.state == "ready" and r.in_flight < self.spec.container_concurrency
            if free and (best is None or r.in_flight < best.in_flight):
                best = r
        return best

    def _dispatch(self) -> None:
        """Hand queued requests, oldest first, to free slots."""
        while self.waiters:
            replica = self._free_replica()
            if replica is None:
                return
            waiter = self.waiters.popleft()
            if waiter.future.done():
                continue
            replica.in_flight += 1
            waiter.future.set_result(replica)

    # ------------------------------------------------------------------ scaling
    def desired(self) -> int:
        demand = self.in_flight + len(self.waiters)
        want = math.ceil(demand / self.spec.target) if demand else 0
        floor = self.spec.min_replicas
        if self.warm_until > time.monotonic():
            floor = max(floor, min(self.warm_replicas, self.spec.max_replicas))
        return max(floor, min(self.spec.max_replicas, want))

    def _scale(self) -> None:
        """Start replicas up to the demand (each missing one once)."""
        if self.closing:
            return
        active = [r for r in self.replicas if r.state in ("starting", "ready")]
        for _ in range(self.desired() - len(active)):
            replica = Replica(next(_ids))
            self.replicas.append(replica)
            self.metrics.cold_starts.labels(self.name).inc()
            self.events.emit(
                "replica_starting",
                self.name,
                replica=replica.id,
                gpu_type=self.spec.gpu_type,
                price_per_hour=self.spec.price_per_hour,
            )
            replica.task = asyncio.create_task(
                self._run_replica(replica), name=f"replica-{self.name}-{replica.id}"
            )
        self._update_state()

    async def _run_replica(self, replica: Replica) -> None:
        """Start, watch and finally forget one replica."""
        started = time.perf_counter()
        try:
            replica.handle = await self.scaler.start(self.spec)
            await self.scaler.wait_ready(replica.handle, self.spec.startup_timeout_s)
        except Exception as exc:
            await self._failed_start(replica, exc)
            return
        if replica.stop_requested:  # drained while it started: the drain stops it
            return
        cold_start_s = time.perf_counter() - started
        replica.state, replica.ready_at = "ready", time.monotonic()
        replica.idle_since = time.monotonic()
        self.metrics.cold_start_seconds.labels(self.name).observe(cold_start_s)
        phases = dict(replica.handle.timings)
        self.events.emit(
            "replica_ready",
            self.name,
            replica=replica.id,
            url=replica.url,
            cold_start_s=cold_start_s,
            phases=phases,
            warm_pool=replica.handle.warm,
        )
        log.info("model %s: replica %d ready in %.2fs", self.name, replica.id, cold_start_s)
        self.reason = ""
        self.start_failed = False
        self._update_state()
        self._dispatch()
        reason = await self.scaler.wait_exit(replica.handle)
        if replica.stop_requested:
            return
        # it went away on its own: its in-flight requests fail (the proxy sees the connection
        # drop and answers 502); queued ones wait for a replacement
        log.warning("model %s: replica %d crashed: %s", self.name, replica.id, reason)
        self._remove(replica, f"crashed: {reason}")
        self.reason = f"a replica crashed ({reason})"
        self._scale()

    async def _failed_start(self, replica: Replica, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, ActivatorError) else f"{type(exc).__name__}: {exc}"
        log.error("model %s: replica %d failed to start: %s", self.name, replica.id, reason)
        self.events.emit("replica_failed", self.name, replica=replica.id, reason=reason)
        if replica.handle is not None:
            with contextlib.suppress(Exception):
                await self.scaler.stop(replica.handle, 0)
        if replica in self.replicas:
            self.replicas.remove(replica)
        self.reason = f"the last start failed: {reason}"
        self.start_failed = True
        if not any(r.state in ("starting", "ready") for r in self.replicas):
            error: ActivatorError = (
                DeadlineExceeded(f"model '{self.name}': {reason}")
                if "not ready within" in reason
                else ModelUnavailable(f"model '{self.name}' could not start: {reason}")
            )
            for w in list(self.waiters):
                if not w.future.done():
                    w.future.set_exception(error)
            self.waiters.clear()
        self._update_state()

    def _remove(self, replica: Replica, reason: str) -> None:
        if replica in self.replicas:
            self.replicas.remove(replica)
            uptime = time.monotonic() - replica.started
            self.events.emit(
                "replica_stopped", self.name, replica=replica.id, reason=reason, uptime_s=uptime
            )
        self._update_state()

    def _begin_drain(self, replica: Replica, reason: str) -> None:
        if replica.drain_task is None and replica in self.replicas:
            replica.state = "draining"
            replica.stop_requested = True
            self._update_state()
            replica.drain_task = asyncio.create_task(self._drain(replica, reason))

    async def _drain(self, replica: Replica, reason: str) -> None:
        """No new work for ``replica``; once its requests finish (or the grace ends), stop it."""
        replica.state = "draining"
        replica.stop_requested = True
        self._update_state()
        deadline = time.monotonic() + self.grace_period_s
        while replica.in_flight and time.monotonic() < deadline:
            replica.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(replica.idle.wait(), deadline - time.monotonic())
        if replica.handle is not None:
            await self.scaler.stop(replica.handle, self.grace_period_s)
        elif replica.task is not None:  # still starting: stop the start
            replica.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await replica.task
            if replica.handle is not None:
                await self.scaler.stop(replica.handle, 0)
        self._remove(replica, reason)

    async def _control(self) -> None:
        """Keep-alive, surplus replicas, warm windows: checked every ``tick_s``."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_s)
            self._wake.clear()
            self._expire_waiters()
            self._scale()
            now = time.monotonic()
            ready = [r for r in self.replicas if r.state == "ready"]
            surplus = len(ready) + sum(r.state == "starting" for r in self.replicas)
            surplus -= self.desired()
            if surplus <= 0 or self.waiters:
                continue
            # the longest idle replica goes first, once idle past keep-alive
            idle = sorted((r for r in ready if r.in_flight == 0), key=lambda r: r.idle_since)
            keep_alive = self._decide()
            for replica in idle[:surplus]:
                quiet = now - max(replica.idle_since, self.last_request)
                if quiet >= keep_alive:
                    self._begin_drain(replica, "keep-alive expired")

    def _decide(self) -> float:
        """The policy's keep-alive for this idle period (and its pre-warm, scheduled)."""
        if len(self.history.idle_times) == self._decided_at or self.history.last is None:
            return self.keep_alive_s
        self._decided_at = len(self.history.idle_times)
        decision = self.policy.decide(self.history)
        if self._prewarm_timer is not None:
            self._prewarm_timer.cancel()
            self._prewarm_timer = None
        if decision.prewarm_s > 0:
            # unload now; load again just before the next call is expected
            self.keep_alive_s = 0.0
            delay = max(0.0, self.history.last + decision.prewarm_s - time.time())
            self._prewarm_timer = asyncio.get_running_loop().call_later(
                delay, self.warm, decision.keep_alive_s, "policy"
            )
        else:
            self.keep_alive_s = decision.keep_alive_s
        if decision != self._last_decision:
            self._last_decision = decision
            self.events.emit(
                "policy",
                self.name,
                policy=self.policy.name,
                prewarm_s=decision.prewarm_s,
                keep_alive_s=decision.keep_alive_s,
                why=decision.why,
            )
        return self.keep_alive_s

    def learn(self, arrivals: list[float]) -> None:
        """Seed the policy's history with past arrival times (wall clock), e.g. an event log."""
        for t in sorted(arrivals):
            if self.history.last is None or t - self.history.last >= 1.0:
                self.history.observe(t)

    def _expire_waiters(self) -> None:
        """Deadlines are enforced by each waiter's own timer; this drops the leftovers."""
        for w in list(self.waiters):
            if w.future.done():
                self._forget(w)

    def suspect(self, replica: Replica) -> None:
        """A request to ``replica`` broke off: route nothing to it until it passes a check."""
        if replica.state != "ready" or replica.stop_requested:
            return
        replica.state = "checking"
        self._update_state()
        replica.check_task = asyncio.create_task(self._check(replica))

    async def _check(self, replica: Replica) -> None:
        assert replica.handle is not None
        healthy = await self.scaler.healthy(replica.handle)
        if not healthy:  # dead or dying: give its exit a moment to be seen (and logged) as such
            for _ in range(20):
                if replica not in self.replicas:
                    break
                await asyncio.sleep(0.05)
        if replica not in self.replicas or replica.stop_requested:
            return  # it exited meanwhile (and was replaced), or is being stopped
        if healthy:
            replica.state = "ready"
            self._update_state()
            self._dispatch()
        else:
            self._begin_drain(replica, "unhealthy after a dropped request")
            self._scale()

    # ------------------------------------------------------------------ schedules
    def apply_schedule(self, now: dt.datetime) -> float:
        """Warm the model for any window open at ``now``; seconds until the next one starts."""
        soonest = 3600.0
        for i, window in enumerate(self.windows):
            end = window.active_until(now)
            if end is not None:
                start = end - dt.timedelta(seconds=window.duration_s)
                if (i, start) not in self._applied:
                    self._applied.add((i, start))
                    self.warm(
                        (end - now).total_seconds(), source="schedule", replicas=window.replicas
                    )
            upcoming = (window.next_start(now) - now).total_seconds()
            soonest = min(soonest, upcoming)
        return soonest

    async def _schedule(self) -> None:
        while True:
            wait = self.apply_schedule(dt.datetime.now(dt.UTC))
            # wake at the next start, and at least every minute (clock changes, suspends)
            await asyncio.sleep(min(60.0, max(0.05, wait + 0.01)))

    # ------------------------------------------------------------------ admin
    def warm(self, seconds: float, source: str, replicas: int = 1) -> None:
        """Hold ``replicas`` replicas (at most ``max_replicas``) for ``seconds``."""
        if self.warm_until <= time.monotonic():
            self.warm_replicas = 0
        self.warm_until = max(self.warm_until, time.monotonic() + seconds)
        self.warm_replicas = max(self.warm_replicas, replicas)
        self.events.emit(
            "prewarm", self.name, until=time.time() + seconds, replicas=replicas, source=source
        )
        self._scale()

    def sleep(self) -> None:
        """End any warm window and drain the idle replicas now (busy ones finish first)."""
        self.warm_until = 0.0
        self.warm_replicas = 0
        self.events.emit("sleep", self.name)
        for replica in [r for r in self.replicas if r.state in ("ready", "starting")]:
            if replica.state == "starting" or not self.waiters:
                self._begin_drain(replica, "put to sleep")

    # ------------------------------------------------------------------ state
    def _update_state(self) -> None:
        states = {r.state for r in self.replicas}
        if "ready" in states:
            new = "ready"
        elif "starting" in states:
            new = "starting"
        elif "draining" in states:
            new = "draining"
        else:
            new = "zero"
        if new != self.state:
            old, self.state = self.state, new
            self.events.emit("state", self.name, **{"from": old, "to": new})
            if new == "zero" and not self.start_failed:
                self.reason = "scaled to zero: a request wakes it"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "replicas": [
                {"id": r.id, "state": r.state, "in_flight": r.in_flight} for r in self.replicas
            ],
            "queued": len(self.waiters),
            "in_flight": self.in_flight,
            "warm_for_s": max(0.0, self.warm_until - time.monotonic()),
            "min_replicas": self.spec.min_replicas,
            "max_replicas": self.spec.max_replicas,
            "keep_alive_s": self.keep_alive_s,
            "policy": self.policy.name,
        }
