"""The per-model pool: queueing, single-flight scale-up, ordering, keep-alive, failures, windows.

Most tests drive a :class:`ManualClock` by hand (``await clock.advance(600)`` is ten minutes of
keep-alive in a few milliseconds); a few run on the real clock, which production uses. The
scaler is an in-process fake that only keeps time (the real local scaler and real replicas are
exercised in tests/integration/test_activator.py). Each collaborator has its own tests under
tests/unit/activator/pool/.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from activator.errors import (
    DeadlineExceeded,
    ModelUnavailable,
    QueueFull,
    ReplicaStartFailed,
    ShuttingDown,
    StartFailure,
)
from activator.events import EventLog, read_events
from activator.metrics import ActivatorMetrics
from activator.pool import ModelPool, Ticket
from activator.pool.clock import Clock
from activator.scalers.base import ReplicaHandle
from activator.tasks import TaskSet
from activator.testing import ManualClock
from contracts.events import Prewarm
from contracts.replica import FailureKind
from contracts.schedule import parse_window
from tests.unit.activator.pool.fakes import Events, FakeScaler, outcome, spec, turns, until

__all__ = ["FakeScaler", "pool_for", "spec"]  # tests elsewhere build pools with these


@pytest.fixture
def events(tmp_path: Path) -> Iterator[EventLog]:
    log = EventLog(tmp_path / "events.jsonl")
    yield log
    log.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall=dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC).timestamp())


def pool_for(
    scaler: FakeScaler,
    events: EventLog,
    *,
    clock: Clock | None = None,
    tick_s: float = 0.02,
    tasks: TaskSet | None = None,
    **kw: object,
) -> ModelPool:
    """A started pool on ``clock`` (the real one by default)."""
    pool = ModelPool(
        spec(**kw),
        scaler,
        events,
        ActivatorMetrics(),
        grace_period_s=0.5,
        tick_s=tick_s,
        tasks=tasks,
        clock=clock,
    )
    pool.start()
    return pool


def on(clock: ManualClock, **kw: object) -> tuple[ModelPool, FakeScaler, Events]:
    """A started pool, its scaler and its events, all on ``clock`` (ticking every second)."""
    events = Events()
    scaler_kw = {k: kw.pop(k) for k in ("ready_after_s", "fail") if k in kw}
    scaler = FakeScaler(clock=clock, **scaler_kw)  # type: ignore[arg-type]
    return pool_for(scaler, events, clock=clock, tick_s=1.0, **kw), scaler, events


# ---------------------------------------------------------------------- queueing and scaling
async def test_one_start_for_a_burst_then_in_order(clock: ManualClock) -> None:
    pool, scaler, _ = on(
        clock, container_concurrency=1, target=100.0, ready_after_s=5, deadline_s=60
    )
    order: list[int] = []

    async def request(i: int) -> None:
        ticket = await pool.acquire()
        order.append(i)
        await clock.sleep(1)  # the request's work: it holds the slot, so the rest queue
        pool.release(ticket)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(request(i)))
        await turns(lambda n=i + 1: pool.queued == n, f"request {i} to queue")  # in order
    assert scaler.started == 1  # single flight: six waiters, one replica start
    await clock.advance(5 + 6)
    for task in tasks:
        await outcome(task)
    assert order == list(range(6))  # the queue drains oldest first
    await pool.aclose()


async def test_one_start_for_a_burst_on_the_real_clock(events: EventLog) -> None:
    scaler = FakeScaler()
    pool = pool_for(scaler, events, container_concurrency=1, target=100.0)
    order: list[int] = []

    async def request(i: int) -> None:
        ticket = await pool.acquire()
        order.append(i)
        await asyncio.sleep(0.01)  # the request's work: it holds the slot, so the rest queue
        pool.release(ticket)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(request(i)))
        await until(lambda n=i + 1: pool.queued == n, f"request {i} to queue")
    await asyncio.gather(*tasks)
    assert scaler.started == 1 and order == list(range(6))
    await pool.aclose()


async def test_demand_over_target_adds_replicas_up_to_the_max(clock: ManualClock) -> None:
    pool, scaler, _ = on(clock, max_replicas=3, container_concurrency=1, target=1.0, deadline_s=600)
    acquiring = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await turns(lambda: scaler.started == 3, "a start for each of the three")
    await clock.advance(0.05)
    held = [await outcome(t) for t in acquiring]
    assert len({t.replica.id for t in held}) == 3
    extra = asyncio.create_task(pool.acquire())
    await turns(lambda: pool.queued == 1, "the extra request to queue")
    await clock.advance(60)
    assert len(pool.replicas) == 3 and scaler.started == 3  # at the max: no fourth start
    assert not extra.done()  # it waits for a slot
    pool.release(held[0])
    held[0] = await outcome(extra)
    for ticket in held:
        pool.release(ticket)
    assert pool.in_flight == 0
    await pool.aclose()


async def test_a_queued_request_prefers_a_replica_but_never_waits_for_it(
    clock: ManualClock,
) -> None:
    pool, scaler, _ = on(clock, max_replicas=2, container_concurrency=1, target=1.0, deadline_s=600)
    held = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    await turns(lambda: scaler.started == 2, "two starts")
    await clock.advance(0.05)
    a, b = [await outcome(t) for t in held]
    # a group's member awake only on b's replica: queued, it takes the first slot that frees
    waiting = asyncio.create_task(pool.acquire(prefer=lambda r: r is b.replica))
    await turns(lambda: pool.queued == 1, "the request to queue")
    pool.release(a)
    got = await outcome(waiting)
    assert got.replica is a.replica  # not held back for b's
    pool.release(got)
    pool.release(b)
    # with both free, the preferred one rather than the first
    ticket = pool.try_acquire(prefer=lambda r: r is b.replica)
    assert ticket is not None and ticket.replica is b.replica
    pool.release(ticket)
    await pool.aclose()


async def test_full_queue_is_refused_and_the_rest_answered(clock: ManualClock) -> None:
    pool, _, _ = on(clock, queue_size=3, container_concurrency=3, ready_after_s=3)
    acquiring = [asyncio.create_task(pool.acquire()) for _ in range(5)]
    await turns(lambda: sum(t.done() for t in acquiring) == 2, "two refusals")
    refused = [t.exception() for t in acquiring if t.done()]
    assert all(isinstance(e, QueueFull) and "queue full (3)" in str(e) for e in refused)
    await clock.advance(3)
    tickets = [await outcome(t) for t in acquiring[:3]]
    assert all(isinstance(t, Ticket) and t.cold and t.queued_s == 3 for t in tickets)
    for ticket in tickets:
        pool.release(ticket)
    await pool.aclose()


async def test_deadline_while_cold_is_a_504_and_frees_its_place(clock: ManualClock) -> None:
    pool, _, _ = on(clock, ready_after_s=30, startup_timeout_s=60, deadline_s=60)
    waiting = asyncio.create_task(pool.acquire(deadline_s=5))
    await clock.advance(4.9)
    assert not waiting.done()
    await clock.advance(0.1)
    with pytest.raises(DeadlineExceeded, match=r"within the request's 5s deadline"):
        await outcome(waiting)
    assert pool.queued == 0
    later = asyncio.create_task(pool.acquire())  # the start went on: a later one gets it
    await clock.advance(25)
    ticket = await outcome(later)
    assert ticket.queued_s == 25
    pool.release(ticket)
    await pool.aclose()


async def test_a_cancelled_waiter_gives_back_its_place(clock: ManualClock) -> None:
    pool, _, _ = on(clock, queue_size=1, ready_after_s=1)
    waiting = asyncio.create_task(pool.acquire())
    await turns(lambda: pool.queued == 1, "the first request to queue")
    with pytest.raises(QueueFull):
        await pool.acquire()
    waiting.cancel()  # the client disconnected
    with pytest.raises(asyncio.CancelledError):
        await outcome(waiting)
    assert pool.queued == 0
    again = asyncio.create_task(pool.acquire())  # its place is free again
    await clock.advance(1)
    pool.release(await outcome(again))
    assert pool.in_flight == 0
    await pool.aclose()


async def test_a_waiter_cancelled_as_it_gets_a_slot_gives_the_slot_back(
    clock: ManualClock,
) -> None:
    pool, scaler, _ = on(clock, container_concurrency=1)
    scaler.gate = asyncio.Event()
    waiting = asyncio.create_task(pool.acquire())
    await turns(lambda: pool.queued == 1, "the request to queue")
    scaler.gate.set()
    await turns(lambda: pool.in_flight == 1, "the slot handed to the waiter")
    waiting.cancel()  # before the waiter ran again: it leaves with a slot it never used
    with pytest.raises(asyncio.CancelledError):
        await outcome(waiting)
    assert pool.in_flight == 0 and pool.queued == 0
    pool.release(pool.try_acquire())  # type: ignore[arg-type]
    await pool.aclose()


# ---------------------------------------------------------------------- failed starts
async def test_a_load_failure_fails_its_waiters_at_once_with_the_reason(
    clock: ManualClock,
) -> None:
    pool, scaler, events = on(clock)
    scaler.gate, scaler.stop_gate = asyncio.Event(), asyncio.Event()  # the stop never ends
    scaler.fail = ReplicaStartFailed(
        "bad weights", StartFailure.LOAD_FAILED, FailureKind.WEIGHTS_CORRUPT
    )
    waiting = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await turns(lambda: pool.queued == 3, "three waiters")
    scaler.gate.set()  # the scaler raises: no time passes, the failed replica's stop hangs
    await turns(lambda: all(t.done() for t in waiting), "the waiters to hear", limit=5)
    for task in waiting:
        error = task.exception()
        assert type(error) is ModelUnavailable and error.status_code == 503
        assert str(error) == "model 'm' could not start: bad weights"
    assert pool.state == "zero" and pool.start_failed
    assert pool.reason == pool.describe()["reason"] == "the last start failed: bad weights"
    (failed,) = events.of("replica_failed")
    assert failed["reason"] == "bad weights" and failed["kind"] == "load_failed"
    assert failed["failure"] == "weights_corrupt"
    # the model is at zero: the next request starts a new replica
    scaler.gate = scaler.fail = None
    retry = asyncio.create_task(pool.acquire())
    await clock.advance(0.05)
    pool.release(await outcome(retry))
    assert scaler.started == 2 and pool.state == "ready" and not pool.start_failed
    scaler.stop_gate.set()
    await pool.aclose()


async def test_a_start_that_times_out_is_a_504_and_the_next_request_retries(
    clock: ManualClock,
) -> None:
    pool, scaler, events = on(clock, ready_after_s=1000, startup_timeout_s=120, deadline_s=300)
    waiting = asyncio.create_task(pool.acquire())
    await clock.advance(120)
    with pytest.raises(DeadlineExceeded, match="its replica was not ready within 120s") as info:
        await outcome(waiting)
    assert info.value.status_code == 504
    assert pool.state == "zero" and "not ready within 120s" in pool.reason
    assert events.of("replica_failed")[0]["kind"] == "timed_out"
    scaler.ready_after_s = 1
    retry = asyncio.create_task(pool.acquire())
    await clock.advance(1)
    pool.release(await outcome(retry))
    assert scaler.started == 2
    await pool.aclose()


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (OSError("no such file"), "OSError: no such file"),  # a bug, not a typed failure
        # an untyped error whose message reads like a timeout is still a 503: kinds, not words
        (ModelUnavailable("its replica was not ready within 3s"), "not ready within 3s"),
    ],
)
async def test_an_untyped_start_failure_is_a_503(
    clock: ManualClock, raised: Exception, reason: str
) -> None:
    pool, _, events = on(clock, fail=raised)
    waiting = asyncio.create_task(pool.acquire())
    await clock.advance(0.05)
    with pytest.raises(ModelUnavailable, match=reason) as info:
        await outcome(waiting)
    assert info.value.status_code == 503 and not isinstance(info.value, DeadlineExceeded)
    assert pool.start_failed and reason in pool.reason
    assert events.of("replica_failed")[0]["kind"] is None
    await pool.aclose()


async def test_a_failed_start_on_the_real_clock(events: EventLog) -> None:
    pool = pool_for(FakeScaler(fail="exited with 1: bad weights"), events)
    results = await asyncio.gather(*(pool.acquire() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ModelUnavailable) and "bad weights" in str(r) for r in results)
    assert pool.state == "zero" and "bad weights" in pool.reason
    await pool.aclose()


# ---------------------------------------------------------------------- keep-alive, crashes
async def test_keep_alive_scales_to_zero_and_a_request_wakes_it(clock: ManualClock) -> None:
    pool, scaler, events = on(clock, keep_alive_s=600)
    first = asyncio.create_task(pool.acquire())
    await clock.advance(0.05)
    pool.release(await outcome(first))
    await clock.advance(599)
    assert pool.state == "ready"  # ready for the whole keep-alive, not less
    await clock.advance(2)  # a tick within the next second sees it expired
    await turns(lambda: pool.state == "zero", "scale to zero")
    assert scaler.stopped == 1
    assert events.of("replica_stopped")[0]["reason"] == "keep-alive expired"
    again = asyncio.create_task(pool.acquire())
    await clock.advance(0.05)
    pool.release(await outcome(again))
    assert scaler.started == 2 and events.kinds().count("replica_ready") == 2
    await pool.aclose()


async def test_keep_alive_on_the_real_clock(tmp_path: Path, events: EventLog) -> None:
    scaler = FakeScaler()
    pool = pool_for(scaler, events, keep_alive_s=0.2)
    ticket = await pool.acquire()
    released = time.monotonic()
    pool.release(ticket)
    await until(lambda: pool.state != "ready", "keep-alive to expire")
    assert time.monotonic() - released >= 0.2  # ready for the whole keep-alive, not less
    await until(lambda: pool.state == "zero", "scale to zero")
    assert scaler.stopped == 1
    await pool.aclose()
    events.flush()
    kinds = [e.kind for e in read_events(tmp_path / "events.jsonl")]
    assert kinds.count("replica_ready") == 1 and "replica_stopped" in kinds


async def test_a_crashed_replica_is_replaced_for_the_queue(clock: ManualClock) -> None:
    pool, scaler, _ = on(clock, container_concurrency=1)
    acquiring = asyncio.create_task(pool.acquire())
    await clock.advance(0.05)
    first = await outcome(acquiring)
    queued = asyncio.create_task(pool.acquire())
    await turns(lambda: pool.queued == 1, "the second request to queue")
    scaler.crash(first.replica.url)  # the proxy's request to it fails; the queue waits
    await turns(lambda: scaler.started == 2, "a replacement")
    assert pool.reason == "a replica crashed (exited with -9)"
    await clock.advance(0.05)
    second = await outcome(queued)
    assert second.replica is not first.replica
    pool.release(first)
    pool.release(second)
    await pool.aclose()


async def test_a_dropped_request_sends_its_replica_to_a_health_check(clock: ManualClock) -> None:
    pool, scaler, _ = on(clock, container_concurrency=1)
    acquiring = asyncio.create_task(pool.acquire())
    await clock.advance(0.05)
    ticket = await outcome(acquiring)
    pool.suspect(ticket.replica)
    pool.release(ticket)
    assert ticket.replica.state == "checking" and pool.try_acquire() is None
    await turns(lambda: ticket.replica.state == "ready", "the check to pass")
    # a replica that fails its check is drained, and replaced for whoever waits
    ticket = pool.try_acquire()  # type: ignore[assignment]
    queued = asyncio.create_task(pool.acquire())
    await turns(lambda: pool.queued == 1, "a request to queue")
    scaler.answers_health = False
    pool.suspect(ticket.replica)
    await clock.advance(1)  # its exit is given a second to show
    await turns(lambda: scaler.started == 2, "a replacement")
    await clock.advance(0.05)
    pool.release(await outcome(queued))
    pool.release(ticket)
    await pool.aclose()


# ---------------------------------------------------------------------- warm windows
async def test_warm_and_sleep(clock: ManualClock) -> None:
    pool, scaler, events = on(clock, keep_alive_s=60)
    pool.warm(3600, source="test")
    await clock.advance(0.05)
    assert pool.state == "ready" and scaler.started == 1
    await clock.advance(1800)  # well past the keep-alive: the warm window holds it
    assert pool.state == "ready" and scaler.stopped == 0
    assert pool.describe()["warm_for_s"] == pytest.approx(1800 - 0.05)
    pool.sleep()
    await turns(lambda: pool.state == "zero", "sleep to scale to zero")
    assert [e["source"] for e in events.of("prewarm")] == ["test"] and "warm_end" in events.kinds()
    await pool.aclose()


async def test_min_replicas_start_without_requests(clock: ManualClock) -> None:
    pool, scaler, _ = on(clock, min_replicas=1, keep_alive_s=1)
    await clock.advance(1.05)  # the first tick starts it
    assert pool.state == "ready"
    await clock.advance(3600)
    assert pool.state == "ready" and scaler.started == 1 and scaler.stopped == 0
    await pool.aclose()
    assert scaler.stopped == 1


async def test_the_activator_warms_a_model_for_its_window(tmp_path: Path, events: EventLog) -> None:
    window = {"cron": "0 8 * * *", "timezone": "UTC", "duration_s": 3600, "replicas": 1}
    scaler = FakeScaler()
    # not started: the window is applied at chosen instants, never at the wall clock's
    pool = ModelPool(
        spec(prewarm=(parse_window(window, "w"),)),
        scaler,
        events,
        ActivatorMetrics(),
        grace_period_s=0.5,
    )
    before = dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC)
    assert pool.apply_schedule(before) == 3600  # an hour until it opens
    assert scaler.started == 0
    during = dt.datetime(2026, 11, 30, 8, 30, tzinfo=dt.UTC)
    pool.apply_schedule(during)
    assert 1790 < pool.describe()["warm_for_s"] <= 1800  # warm for the rest of the window
    pool.apply_schedule(during + dt.timedelta(minutes=1))  # the same window: not again
    await pool.aclose()
    events.flush()
    prewarms = [e for e in read_events(tmp_path / "events.jsonl") if isinstance(e, Prewarm)]
    assert [p.source for p in prewarms] == ["schedule"]


async def test_a_started_pool_warms_when_its_window_opens(clock: ManualClock) -> None:
    window = parse_window({"cron": "0 8 * * *", "duration_s": 1800, "replicas": 1}, "w")
    pool, scaler, events = on(clock, prewarm=(window,), keep_alive_s=60)  # the clock: 07:00
    await clock.advance(3599)
    assert scaler.started == 0
    await clock.advance(1)  # 08:00: the scheduler wakes and warms it for the window
    assert pool.state == "starting" and scaler.started == 1
    await clock.advance(0.05)
    assert pool.state == "ready"
    assert pool.describe()["warm_for_s"] == pytest.approx(1800 - 0.05)
    await clock.advance(1800 + 61)  # the window and then the keep-alive are over
    await turns(lambda: pool.state == "zero", "the model back at zero")
    assert [e["source"] for e in events.of("prewarm")] == ["schedule"]
    await pool.aclose()


# ---------------------------------------------------------------------- tasks and shutdown
async def test_every_task_runs_in_the_given_task_set(clock: ManualClock) -> None:
    tasks = TaskSet()
    scaler = FakeScaler(clock=clock)
    window = parse_window({"cron": "0 8 * * *", "duration_s": 60}, "w")
    pool = pool_for(scaler, Events(), clock=clock, tasks=tasks, prewarm=(window,))
    acquiring = asyncio.create_task(pool.acquire())
    await turns(lambda: len(tasks) == 3, "controller, scheduler, replica runner")
    assert {t.get_name() for t in asyncio.all_tasks()} >= {"pool-m", "prewarm-m"}
    await clock.advance(0.05)
    pool.release(await outcome(acquiring))
    await pool.aclose()  # the pool's own tasks end; the set is the lifespan's to close
    await turns(lambda: len(tasks) == 0, "the pool's tasks to end")
    assert not tasks.closed and scaler.stopped == 1
    await tasks.aclose()


async def test_aclose_refuses_the_queue_and_stops_a_starting_replica(clock: ManualClock) -> None:
    pool, scaler, events = on(clock, ready_after_s=60)
    waiting = asyncio.create_task(pool.acquire())
    await turns(lambda: scaler.started == 1 and bool(scaler.exits), "a start under way")
    await pool.aclose()
    with pytest.raises(ShuttingDown):
        await outcome(waiting)
    with pytest.raises(ShuttingDown):
        pool.try_acquire()
    assert scaler.stopped == 1 and pool.replicas == [] and pool.state == "zero"
    assert pool.tasks.closed and len(pool.tasks) == 0  # a private task set closes with it
    assert events.of("replica_stopped")[0]["reason"] == "activator shutting down"


# ---------------------------------------------------------------------- progress, at INFO
class Timed(FakeScaler):
    """Its replicas report their load's phases with their READY, as real ones do."""

    async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        await super().wait_ready(handle, timeout_s)
        handle.timings.update({"imports": 0.9, "load": 0.3})


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ember.activator"]


async def test_a_cold_start_says_why_its_phases_and_why_it_went_back_to_zero(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ember.activator")
    scaler = Timed(ready_after_s=2, clock=clock)
    pool = pool_for(scaler, Events(), clock=clock, tick_s=1.0, keep_alive_s=5)
    waiting = asyncio.create_task(pool.acquire())
    await turns(lambda: scaler.started == 1, "the start")
    await clock.advance(2)
    pool.release(await outcome(waiting))
    await clock.advance(7)
    await turns(lambda: pool.state == "zero", "scale to zero")
    await pool.aclose()
    lines = said(caplog)
    assert re.fullmatch(r"model m: waking \(a request\): replica (\d+) starting", lines[0])
    assert re.fullmatch(r"model m: replica \d+ up in 0\.00s; loading", lines[1])
    assert re.fullmatch(
        r"model m: replica \d+ ready in 2\.00s \(imports 0\.90s, load 0\.30s\)", lines[2]
    )
    assert lines[3:] == ["model m: scaled to zero: keep-alive expired (idle 5s, fixed policy)"]


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("admin", "the admin API"),
        ("prewarm", "ember prewarm"),
        ("schedule", "a pre-warm window"),
        ("policy", "the keep-alive policy's pre-warm"),
        ("repository-load", "a repository load request"),
    ],
)
async def test_a_warm_window_says_who_woke_the_model_and_a_sleep_who_put_it_back(
    clock: ManualClock, caplog: pytest.LogCaptureFixture, source: str, why: str
) -> None:
    caplog.set_level(logging.INFO, "ember.activator")
    pool, _, _ = on(clock)
    pool.warm(60, source=source)
    await clock.advance(0.05)
    await turns(lambda: pool.state == "ready", "the warm replica")
    pool.sleep("the admin API")
    await turns(lambda: pool.state == "zero", "asleep")
    await pool.aclose()
    lines = said(caplog)
    assert re.fullmatch(rf"model m: waking \({why}\): replica \d+ starting", lines[0])
    assert lines[-1] == "model m: scaled to zero: put to sleep (the admin API)"


async def test_a_scale_up_says_the_demand_that_asked_for_it(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ember.activator")
    pool, scaler, _ = on(clock, max_replicas=2, container_concurrency=1, target=1.0)
    acquiring = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    await turns(lambda: scaler.started == 2, "two starts")
    starts = [line for line in said(caplog) if line.endswith("starting")]
    assert re.fullmatch(r"model m: waking \(a request\): replica \d+ starting", starts[0])
    expected = r"model m: scaling up \(2 requests, 1 per replica\): replica \d+ starting"
    assert re.fullmatch(expected, starts[1])
    await clock.advance(0.05)
    for task in acquiring:
        pool.release(await outcome(task))
    await pool.aclose()
