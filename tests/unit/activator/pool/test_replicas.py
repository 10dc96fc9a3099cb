"""Replica lifecycle: start, ready, crash, failed start, health check, drain and stop, on a
manual clock; the model state follows the replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from activator.errors import (
    ActivatorError,
    DeadlineExceeded,
    ModelUnavailable,
    ReplicaStartFailed,
    StartFailure,
)
from activator.metrics import ActivatorMetrics
from activator.pool.replicas import Replica, ReplicaSet
from activator.states import ReplicaState
from activator.tasks import TaskSet
from activator.testing import ManualClock
from tests.unit.activator.pool.fakes import Events, FakeScaler, outcome, spec, turns

GRACE_S = 30.0


@dataclass
class Harness:
    clock: ManualClock
    scaler: FakeScaler
    events: Events
    tasks: TaskSet
    replicas: ReplicaSet
    freed: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    failed: list[ActivatorError] = field(default_factory=list)

    def release(self, replica: Replica) -> None:
        replica.in_flight -= 1
        if replica.in_flight == 0:
            replica.idle.set()


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    clock = ManualClock()
    events, tasks = Events(), TaskSet()
    scaler = FakeScaler(ready_after_s=2, clock=clock)
    freed: list[int] = []
    lost: list[int] = []
    failed: list[ActivatorError] = []
    replicas = ReplicaSet(
        spec(container_concurrency=2, max_replicas=3),
        scaler,
        events,
        ActivatorMetrics(),
        clock=clock,
        tasks=tasks,
        grace_period_s=GRACE_S,
        on_free=lambda: freed.append(1),
        on_lost=lambda: lost.append(1),
        on_failed=failed.append,
    )
    yield Harness(clock, scaler, events, tasks, replicas, freed, lost, failed)
    stopping = asyncio.create_task(replicas.stop_all("test over"))
    await clock.advance(GRACE_S)  # a request a test left in flight holds its replica that long
    await outcome(stopping)
    await tasks.aclose()


async def test_a_replica_starts_becomes_ready_and_frees_slots(h: Harness) -> None:
    h.replicas.start(1)
    assert h.replicas.state == "starting" and h.replicas.active() == 1
    await h.clock.advance(2)
    (replica,) = h.replicas.members
    assert replica.state == "ready" and h.replicas.state == "ready" and h.freed == [1]
    assert h.replicas.reason == "" and not h.replicas.start_failed
    (ready,) = h.events.of("replica_ready")
    assert ready["cold_start_s"] == 2 and ready["url"] == replica.url
    assert [(e["from"], e["to"]) for e in h.events.of("state")] == [
        ("zero", "starting"),
        ("starting", "ready"),
    ]


async def test_a_slot_is_claimed_on_the_least_busy_ready_replica(h: Harness) -> None:
    h.replicas.start(2)
    await h.clock.advance(2)
    a, b = h.replicas.members
    assert h.replicas.claim() is a and h.replicas.claim() is b  # a has one: b is less busy
    assert h.replicas.claim() is a and h.replicas.claim() is b
    assert h.replicas.claim() is None  # two each: container_concurrency
    assert h.replicas.in_flight() == 4
    b.state = ReplicaState.CHECKING
    h.release(b)
    assert h.replicas.claim() is None  # b has room but is not ready


async def test_a_claim_prefers_the_replicas_it_is_told_to_while_they_have_room(
    h: Harness,
) -> None:
    h.replicas.start(2)
    await h.clock.advance(2)
    a, b = h.replicas.members
    on_b = lambda r: r is b  # noqa: E731  (a group's: the replica where the model is awake)
    assert h.replicas.claim(on_b) is b and h.replicas.claim(on_b) is b
    assert h.replicas.claim(on_b) is a  # b is full: any replica with room rather than a wait
    assert h.replicas.claim(lambda r: False) is a  # none preferred: the least busy


async def test_a_crash_removes_the_replica_and_asks_for_a_replacement(h: Harness) -> None:
    h.replicas.start(1)
    await h.clock.advance(2)
    (replica,) = h.replicas.members
    await h.clock.advance(58)
    h.scaler.crash(replica.url)
    await turns(lambda: h.lost == [1], "the replacement asked for")
    assert h.replicas.members == [] and h.replicas.state == "zero"
    assert h.replicas.reason == "a replica crashed (exited with -9)"
    (stopped,) = h.events.of("replica_stopped")
    assert stopped["reason"] == "crashed: exited with -9" and stopped["uptime_s"] == 60


async def test_a_failed_start_tells_the_waiters_when_no_other_replica_is_up(h: Harness) -> None:
    h.scaler.ready_after_s = 1000  # past the 5 s startup timeout
    h.replicas.start(1)
    await h.clock.advance(5)
    (error,) = h.failed
    assert isinstance(error, DeadlineExceeded) and "not ready within 5s" in str(error)
    assert h.replicas.state == "zero" and h.replicas.start_failed
    assert h.replicas.reason == "the last start failed: its replica was not ready within 5s"
    # one replica up, another fails: the one up serves the waiters, nobody is failed
    h.scaler.ready_after_s = 2
    h.replicas.start(1)
    await h.clock.advance(2)
    h.scaler.fail = ReplicaStartFailed("bad weights", StartFailure.LOAD_FAILED)
    h.replicas.start(1)
    await h.clock.advance(2)
    assert len(h.events.of("replica_failed")) == 2 and len(h.failed) == 1
    assert h.replicas.active() == 1 and h.replicas.state == "ready"
    assert h.replicas.reason == "the last start failed: bad weights"


async def test_a_failed_start_with_no_other_coming_is_a_503_for_load_failures(h: Harness) -> None:
    h.scaler.fail = "bad weights"
    h.replicas.start(1)
    await h.clock.advance(2)
    (error,) = h.failed
    assert type(error) is ModelUnavailable and "could not start: bad weights" in str(error)
    assert h.scaler.stopped == 1  # the failed replica's process is stopped all the same


async def test_a_drain_waits_for_in_flight_work_then_stops(h: Harness) -> None:
    h.replicas.start(1)
    await h.clock.advance(2)
    replica = h.replicas.claim()
    assert replica is not None
    h.replicas.drain(replica, "keep-alive expired")
    assert replica.state == "draining" and h.replicas.state == "draining"
    assert h.replicas.claim() is None
    await h.clock.advance(GRACE_S - 1)
    assert h.scaler.stopped == 0  # its request runs on
    h.release(replica)
    await turns(lambda: h.replicas.members == [], "the stop once it is idle")
    assert h.scaler.stopped == 1 and h.replicas.state == "zero"
    assert h.events.of("replica_stopped")[0]["reason"] == "keep-alive expired"


async def test_a_drain_stops_a_busy_replica_at_the_end_of_the_grace(h: Harness) -> None:
    h.replicas.start(1)
    await h.clock.advance(2)
    replica = h.replicas.claim()
    assert replica is not None
    h.replicas.drain(replica, "put to sleep")
    h.replicas.drain(replica, "twice")  # one drain per replica
    await h.clock.advance(GRACE_S - 0.001)
    assert h.scaler.stopped == 0
    await h.clock.advance(0.001)
    await turns(lambda: h.replicas.members == [], "the stop at the grace's end")
    assert h.scaler.stopped == 1 and len(h.events.of("replica_stopped")) == 1


async def test_a_drain_before_the_replica_has_an_address_cancels_the_start(h: Harness) -> None:
    h.scaler.start_gate = asyncio.Event()  # the scaler's start never returns by itself
    h.replicas.start(1)
    await turns(lambda: h.scaler.started == 1, "the start under way")
    (replica,) = h.replicas.members
    h.replicas.drain(replica, "put to sleep")
    await turns(lambda: h.replicas.members == [], "the drain")
    assert replica.task is not None and replica.task.cancelled()
    assert h.scaler.stopped == 0 and h.events.of("replica_failed") == []
    assert h.events.of("replica_stopped")[0]["reason"] == "put to sleep"


async def test_a_drain_while_loading_stops_the_replica(h: Harness) -> None:
    h.scaler.gate = asyncio.Event()  # it has an address; it never gets ready by itself
    h.replicas.start(1)
    await turns(lambda: h.scaler.started == 1 and bool(h.scaler.exits), "the load under way")
    (replica,) = h.replicas.members
    h.replicas.drain(replica, "put to sleep")
    await turns(lambda: h.replicas.members == [], "the drain")
    assert h.scaler.stopped == 1 and h.events.of("replica_ready") == []
    # its load ends as a real one's does: a failed start (as before the split)
    await turns(lambda: len(h.events.of("replica_failed")) == 1, "the load to end")
    assert h.events.of("replica_failed")[0]["kind"] == "exited"


async def test_a_suspect_replica_is_checked_and_back_or_replaced(h: Harness) -> None:
    h.replicas.start(1)
    await h.clock.advance(2)
    (replica,) = h.replicas.members
    h.replicas.suspect(replica)
    assert replica.state == "checking" and h.replicas.claim() is None
    await turns(lambda: replica.state == "ready", "the check to pass")
    assert h.freed == [1, 1]
    h.scaler.answers_health = False
    h.replicas.suspect(replica)
    await h.clock.advance(1)  # up to a second for its exit to show
    await turns(lambda: h.lost == [1], "a replacement asked for")
    assert replica.stop_requested
    await turns(lambda: h.replicas.members == [], "the unhealthy replica stopped")
    assert h.events.of("replica_stopped")[0]["reason"] == "unhealthy after a dropped request"


async def test_stop_all_works_while_the_task_set_is_closing(h: Harness) -> None:
    h.replicas.start(2)
    await h.clock.advance(2)
    h.replicas.drain(h.replicas.members[0], "keep-alive expired")  # one drain already begun
    h.tasks.closed = True  # the lifespan is tearing down: nothing new may be spawned
    await h.replicas.stop_all("activator shutting down")
    assert h.replicas.members == [] and h.scaler.stopped == 2
    reasons = sorted(e["reason"] for e in h.events.of("replica_stopped"))
    assert reasons == ["activator shutting down", "keep-alive expired"]
