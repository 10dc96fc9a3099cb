"""One model's replicas, its bounded queue, and the policy that scales it to zero and back.

Model states: ``zero`` (no replica) -> ``starting`` (one is loading) -> ``ready`` (one answers)
-> ``draining`` (the last ones finish their work before they stop) -> ``zero``.

A request takes a *slot* on a ready replica (at most ``container_concurrency`` per replica). With
no free slot it waits in a FIFO queue bounded by ``queue_size`` (past it: 503 + Retry-After) until
its deadline (then 504); a slot freed or a replica ready hands the queue's head on, in order.
:class:`ModelPool` is the face the activator sees; the work is its collaborators':

* :class:`~activator.pool.queue.AdmissionQueue`: the waiters, their deadlines, the hand-off;
* :class:`~activator.pool.replicas.ReplicaSet`: start, ready, crash, health check, drain, stop;
* :class:`~activator.pool.autoscale.Autoscaler`: demand to replicas, keep-alive, the policy;
* :class:`~activator.pool.prewarm.WarmWindows`: admin warm/sleep and the ``prewarm`` windows;
* a :class:`~activator.pool.clock.Clock` for every reading of time, and a
  :class:`~activator.tasks.TaskSet` (the lifespan's) for every task.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from activator.errors import DeadlineExceeded, ShuttingDown
from activator.events import EventLog
from activator.metrics import ActivatorMetrics
from activator.policy import Policy
from activator.pool.autoscale import Autoscaler
from activator.pool.clock import Clock, SystemClock, Timer
from activator.pool.prewarm import WarmWindows
from activator.pool.queue import AdmissionQueue
from activator.pool.replicas import Replica, ReplicaSet
from activator.scalers.base import Scaler
from activator.states import PoolState, ReplicaState
from activator.tasks import TaskSet
from contracts.stack import ModelSpec


@dataclass(slots=True)
class Ticket:
    """A request's claim on a replica slot; give it back with :meth:`ModelPool.release`."""

    replica: Replica
    queued_s: float
    cold: bool


class ModelPool:
    """One model's pool. ``tasks``: the lifespan's task set, which every task of the pool runs
    in (default: a private one, closed by :meth:`aclose`); ``clock``: the time it reads;
    ``on_ready``: told of each replica once it is ready."""

    def __init__(
        self,
        spec: ModelSpec,
        scaler: Scaler,
        events: EventLog,
        metrics: ActivatorMetrics,
        *,
        grace_period_s: float = 30.0,
        tick_s: float = 0.1,
        tasks: TaskSet | None = None,
        clock: Clock | None = None,
        on_ready: Callable[[Replica], None] | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.scaler = scaler
        self.events = events
        self.metrics = metrics
        self.grace_period_s = grace_period_s
        self.tick_s = tick_s
        self.clock: Clock = SystemClock() if clock is None else clock
        self._own_tasks = tasks is None  # a private set is closed with the pool
        self.tasks = TaskSet() if tasks is None else tasks
        self.closing = False
        self._queue: AdmissionQueue[Replica] = AdmissionQueue(
            spec.name, spec.queue_size, self.clock
        )
        self._waiters = self._queue.waiters
        self._windows = WarmWindows(
            spec.name, spec.prewarm, events, clock=self.clock, warm=self.warm
        )
        self._replicas = ReplicaSet(
            spec,
            scaler,
            events,
            metrics,
            clock=self.clock,
            tasks=self.tasks,
            grace_period_s=grace_period_s,
            on_free=self._hand_off,
            on_lost=self._replace,
            on_failed=self._queue.fail_all,
            on_ready=on_ready,
        )
        self._autoscaler = Autoscaler(
            spec,
            self._replicas,
            self._queue,
            self._windows,
            events,
            clock=self.clock,
            warm=self.warm,
            policy=policy,
        )
        self._now = self.clock.monotonic
        self._controller: asyncio.Task[None] | None = None
        self._scheduler: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._controller = self.tasks.spawn(
            self._autoscaler.run(self.tick_s), name=f"pool-{self.name}"
        )
        if self._windows.windows:
            self._scheduler = self.tasks.spawn(self._windows.run(), name=f"prewarm-{self.name}")

    async def aclose(self) -> None:
        """Stop taking requests, fail the queued ones, drain and stop every replica."""
        self.refuse_waiters()
        loops = [t for t in (self._controller, self._scheduler) if t is not None]
        for task in loops:
            task.cancel()
        if loops:
            await asyncio.wait(loops)
        await self._replicas.stop_all("activator shutting down")
        if self._own_tasks:
            await self.tasks.aclose()

    def refuse_waiters(self) -> None:
        """Stop taking requests; the queued ones get 503 (ShuttingDown) now."""
        self.closing = True
        self._autoscaler.close()
        self._queue.fail_all(ShuttingDown("the activator is shutting down"))

    # ------------------------------------------------------------------ requests
    def try_acquire(self, prefer: Callable[[Replica], bool] | None = None) -> Ticket | None:
        """A slot now, if a ready replica has one and nobody is queued before us; ``prefer``:
        the replicas to pick first (see :meth:`ReplicaSet.claim`)."""
        if self.closing:
            raise ShuttingDown("the activator is shutting down")
        self._autoscaler.arrived()
        if self._waiters:
            return None
        replica = self._replicas.claim(prefer)
        if replica is None:
            return None
        return Ticket(replica, 0.0, False)

    async def acquire(
        self, deadline_s: float | None = None, prefer: Callable[[Replica], bool] | None = None
    ) -> Ticket:
        """A slot on a ready replica, waiting in the queue (and waking the model) if need be."""
        ticket = self.try_acquire(prefer)
        if ticket is not None:
            return ticket
        timeout = self.spec.deadline_s if deadline_s is None else deadline_s
        waiter = self._queue.join(timeout, prefer)
        cold = not any(r.state is ReplicaState.READY for r in self._replicas.members)
        self._autoscaler.scale()
        try:
            replica = await self._queue.wait(waiter, self.release_replica)
        except TimeoutError:
            raise DeadlineExceeded(
                f"model '{self.name}': no replica was ready within the request's "
                f"{timeout:g}s deadline ({self.reason})"
            ) from None
        return Ticket(replica, self._now() - waiter.arrival, cold)

    def release(self, ticket: Ticket, *, answered: bool = True) -> None:
        """Give the slot back; ``answered``: whether the replica answered (a group's member
        measures its wakes from those; a model's own pool needs no more than the slot)."""
        self.release_replica(ticket.replica)

    def release_replica(self, replica: Replica) -> None:
        replica.in_flight -= 1
        if replica.in_flight == 0:
            replica.idle_since = self._now()
            replica.idle.set()
        if self._waiters:
            self._hand_off()

    def suspect(self, replica: Replica) -> None:
        """A request to ``replica`` broke off: route nothing to it until it passes a check."""
        self._replicas.suspect(replica)

    def _hand_off(self) -> None:
        self._queue.hand_off(self._claim_for_head)

    def _claim_for_head(self) -> Replica | None:
        """A slot for the queue's head (the waiter being handed one), on a replica it prefers
        when one of those has room."""
        return self._replicas.claim(self._waiters[0].prefer)

    def _replace(self) -> None:
        self._autoscaler.scale()

    # ------------------------------------------------------------------ warm windows
    def warm(self, seconds: float, source: str, replicas: int = 1) -> None:
        """Hold ``replicas`` replicas (at most ``max_replicas``) for ``seconds``."""
        self._windows.hold(seconds, replicas=replicas, source=source)
        self._autoscaler.scale()

    def sleep(self, source: str = "the admin API") -> None:
        """End any warm window and drain the idle replicas now (busy ones finish first);
        ``source``: who asked, for the log."""
        self._windows.end()
        for replica in [
            r
            for r in self._replicas.members
            if r.state in (ReplicaState.READY, ReplicaState.STARTING)
        ]:
            if replica.state is ReplicaState.STARTING or not self._waiters:
                self._replicas.drain(replica, "put to sleep", source)

    def apply_schedule(self, now: dt.datetime) -> float:
        """Warm the model for any window open at ``now``; seconds until the next one starts."""
        return self._windows.apply(now)

    def learn(self, arrivals: list[float]) -> None:
        """Seed the policy's history with past arrival times (wall clock), e.g. an event log."""
        self._autoscaler.learn(arrivals)

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> PoolState:
        """``zero`` | ``starting`` | ``ready`` | ``draining``."""
        return self._replicas.state

    @property
    def reason(self) -> str:
        """Why the model is not ready (empty when it is)."""
        return self._replicas.reason

    @property
    def start_failed(self) -> bool:
        """The last start failed (``reason`` says why); cleared when a replica is ready."""
        return self._replicas.start_failed

    @property
    def replicas(self) -> list[Replica]:
        return self._replicas.members

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def in_flight(self) -> int:
        return self._replicas.in_flight()

    @property
    def keep_alive_s(self) -> float:
        return self._autoscaler.keep_alive_s

    @property
    def policy(self) -> Policy:
        return self._autoscaler.policy

    @property
    def prewarm_timer(self) -> Timer | None:
        """The policy's pending pre-warm (it unloaded the model and reloads it then), if any."""
        return self._autoscaler.prewarm_timer

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "replicas": [
                {"id": r.id, "state": r.state, "in_flight": r.in_flight} for r in self.replicas
            ],
            "queued": self.queued,
            "in_flight": self.in_flight,
            "warm_for_s": self._windows.remaining_s(),
            "min_replicas": self.spec.min_replicas,
            "max_replicas": self.spec.max_replicas,
            "keep_alive_s": self.keep_alive_s,
            "policy": self.policy.name,
            "last_cold_start_s": self._replicas.last_cold_start_s,
        }
