"""Demand to replicas: the desired count, single-flight starts, keep-alive and the policy's
pre-warm, on a manual clock with the pool's real collaborators and a fake scaler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from activator.metrics import ActivatorMetrics
from activator.pool.autoscale import Autoscaler
from activator.pool.prewarm import WarmWindows
from activator.pool.queue import AdmissionQueue
from activator.pool.replicas import Replica, ReplicaSet
from activator.states import ReplicaState
from activator.tasks import TaskSet
from activator.testing import ManualClock
from tests.unit.activator.pool.fakes import Events, FakeScaler, outcome, spec, turns


@dataclass
class Harness:
    clock: ManualClock
    scaler: FakeScaler
    events: Events
    queue: AdmissionQueue[Replica]
    windows: WarmWindows
    replicas: ReplicaSet
    autoscaler: Autoscaler
    warmed: list[tuple[float, str]] = field(default_factory=list)

    async def ready(self, count: int) -> list[Replica]:
        self.replicas.start(count)
        await self.clock.advance(self.scaler.ready_after_s)
        return [r for r in self.replicas.members if r.state == "ready"]


Make = Callable[..., Harness]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[tuple[Harness, TaskSet]] = []

    def build(**kw: object) -> Harness:
        clock, events, tasks = ManualClock(), Events(), TaskSet()
        model = spec(**{"max_replicas": 3, "target": 2.0, **kw})
        scaler = FakeScaler(ready_after_s=2, clock=clock)
        queue: AdmissionQueue[Replica] = AdmissionQueue("m", 100, clock)
        warmed: list[tuple[float, str]] = []
        windows = WarmWindows("m", (), events, clock=clock, warm=lambda *a: None)
        replicas = ReplicaSet(
            model,
            scaler,
            events,
            ActivatorMetrics(),
            clock=clock,
            tasks=tasks,
            grace_period_s=1.0,
            on_free=lambda: None,
            on_lost=lambda: None,
            on_failed=lambda error: None,
        )
        autoscaler = Autoscaler(
            model,
            replicas,
            queue,
            windows,
            events,
            clock=clock,
            warm=lambda s, src: warmed.append((s, src)),
        )
        h = Harness(clock, scaler, events, queue, windows, replicas, autoscaler, warmed)
        made.append((h, tasks))
        return h

    yield build
    for h, tasks in made:
        no_demand(h)
        stopping = asyncio.create_task(h.replicas.stop_all("test over"))
        await h.clock.advance(1.0)
        await outcome(stopping)
        await tasks.aclose()


def demand(h: Harness, queued: int) -> None:
    for _ in range(queued):
        h.queue.join(600)


def no_demand(h: Harness) -> None:
    for waiter in list(h.queue.waiters):
        h.queue.forget(waiter)
        waiter.future.cancel()


async def test_desired_is_demand_over_target_within_the_floor_and_the_max(make: Make) -> None:
    h = make(min_replicas=1)
    assert h.autoscaler.desired() == 1  # min_replicas
    demand(h, 3)
    assert h.autoscaler.desired() == 2  # ceil(3 / 2)
    demand(h, 10)
    assert h.autoscaler.desired() == 3  # max_replicas
    no_demand(h)
    h.windows.hold(60, replicas=5, source="admin")
    assert h.autoscaler.desired() == 3  # a warm window's floor, within max_replicas
    await h.clock.advance(60)
    assert h.autoscaler.desired() == 1


async def test_each_missing_replica_is_started_once(make: Make) -> None:
    h = make()
    demand(h, 5)
    for _ in range(10):
        h.autoscaler.scale()  # a burst: every arrival asks
    assert len(h.replicas.members) == 3 and h.replicas.state == "starting"
    await turns(lambda: h.scaler.started == 3, "three starts")
    h.autoscaler.close()
    h.replicas.members[
        0
    ].state = ReplicaState.DRAINING  # one fewer active: a closed scaler starts none
    h.autoscaler.scale()
    assert len(h.replicas.members) == 3


async def test_idle_replicas_beyond_the_need_go_after_the_keep_alive(make: Make) -> None:
    h = make(keep_alive_s=600, min_replicas=1)
    older, newer = await h.ready(2)
    newer.idle_since = h.clock.monotonic()
    older.idle_since = h.clock.monotonic() - 100  # idle longer: it goes first
    h.autoscaler.last_request = h.clock.monotonic() - 1000
    await h.clock.advance(499)
    h.autoscaler.tick()
    assert older.state == "ready"  # quiet 599 s: not yet
    await h.clock.advance(1)
    h.autoscaler.tick()
    assert older.state == "draining" and newer.state == "ready"  # min_replicas keeps one


async def test_a_recent_request_or_a_queue_keeps_replicas(make: Make) -> None:
    h = make(keep_alive_s=60)
    (replica,) = await h.ready(1)
    await h.clock.advance(59)
    h.autoscaler.arrived()  # a request came (and was served): the keep-alive starts again
    await h.clock.advance(59)
    h.autoscaler.tick()
    assert replica.state == "ready"
    await h.clock.advance(1)
    demand(h, 1)  # someone waits: nothing is let go (the replica is theirs soon)
    h.autoscaler.tick()
    assert replica.state == "ready"
    no_demand(h)
    h.autoscaler.tick()
    assert replica.state == "draining"


async def test_bursts_count_once_in_the_policys_history(make: Make) -> None:
    h = make()
    for _ in range(5):
        h.autoscaler.arrived()
    await h.clock.advance(0.5)
    h.autoscaler.arrived()
    await h.clock.advance(30)
    h.autoscaler.arrived()
    assert list(h.autoscaler.history.idle_times) == [30.5]


async def test_a_learned_pattern_unloads_now_and_prewarms_before_the_next_call(make: Make) -> None:
    h = make(policy="hybrid", keep_alive_s=600)
    now = h.clock.time()
    h.autoscaler.learn([now - 1800 * k for k in range(12, 0, -1)])  # every 30 min
    h.autoscaler.arrived()  # this half-hour's call
    (replica,) = await h.ready(1)
    h.autoscaler.tick()
    assert h.autoscaler.keep_alive_s == 0 and replica.state == "draining"
    (decision,) = h.events.of("policy")
    assert decision["prewarm_s"] == 1620 and decision["keep_alive_s"] == 480
    await h.clock.advance(1620 - 2 - 0.001)  # 1620 s after the call, less the 2 s start
    assert h.warmed == []
    await h.clock.advance(0.001)
    assert h.warmed == [(480, "policy")]
    h.autoscaler.tick()
    assert len(h.events.of("policy")) == 1  # no new idle time: no new decision
