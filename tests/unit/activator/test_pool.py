"""The per-model pool: queueing, single-flight scale-up, ordering, keep-alive, failures.

The scaler here is an in-process fake that only keeps time (the real local scaler and real
replicas are exercised in tests/integration/test_activator.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from activator.errors import DeadlineExceeded, ModelUnavailable, QueueFull
from activator.events import EventLog, read_events
from activator.metrics import ActivatorMetrics
from activator.pool import ModelPool, Ticket
from activator.scalers.base import ReplicaHandle
from contracts.stack import ModelSpec


class FakeScaler:
    def __init__(self, ready_after_s: float = 0.05, fail: str | None = None) -> None:
        self.ready_after_s = ready_after_s
        self.fail = fail
        self.started = 0
        self.stopped = 0
        self.exits: dict[str, asyncio.Event] = {}

    async def start(self, spec: ModelSpec) -> ReplicaHandle:
        self.started += 1
        handle = ReplicaHandle(spec.name, f"http://replica-{self.started}")
        self.exits[handle.url] = asyncio.Event()
        return handle

    async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        if self.ready_after_s > timeout_s:
            await asyncio.sleep(timeout_s)  # the behaviour faked: a start that times out
            raise ModelUnavailable(f"its replica was not ready within {timeout_s:g}s")
        await asyncio.sleep(self.ready_after_s)  # the behaviour faked: a start takes time
        if self.fail:
            raise ModelUnavailable(self.fail)

    async def wait_exit(self, handle: ReplicaHandle) -> str:
        await self.exits[handle.url].wait()
        return "exited with -9"

    async def healthy(self, handle: ReplicaHandle) -> bool:
        return not self.exits[handle.url].is_set()

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        self.stopped += 1
        self.exits[handle.url].set()

    def crash(self, url: str) -> None:
        self.exits[url].set()

    async def aclose(self) -> None:
        return None


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
        await asyncio.sleep(0.005)


def spec(**kw: object) -> ModelSpec:
    values: dict[str, object] = {
        "name": "m",
        "config_path": Path("/dev/null"),
        "min_replicas": 0,
        "max_replicas": 1,
        "container_concurrency": 2,
        "target": 2.0,
        "keep_alive_s": 0.3,
        "queue_size": 10,
        "deadline_s": 5.0,
        "startup_timeout_s": 5.0,
    }
    values.update(kw)
    return ModelSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
def events(tmp_path: Path) -> Iterator[EventLog]:
    log = EventLog(tmp_path / "events.jsonl")
    yield log
    log.close()


def pool_for(scaler: FakeScaler, events: EventLog, **kw: object) -> ModelPool:
    pool = ModelPool(
        spec(**kw), scaler, events, ActivatorMetrics(), grace_period_s=0.5, tick_s=0.02
    )
    pool.start()
    return pool


async def test_one_start_for_a_burst_then_in_order(tmp_path: Path, events: EventLog) -> None:
    scaler = FakeScaler()
    pool = pool_for(scaler, events, container_concurrency=1, target=100.0)
    arrived: list[int] = []
    order: list[int] = []

    async def request(i: int) -> None:
        arrived.append(i)  # acquire() queues it before its first await
        ticket = await pool.acquire()
        order.append(i)
        await asyncio.sleep(0.01)  # the request's work: it holds the slot, so the rest queue
        pool.release(ticket)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(request(i)))
        await until(lambda n=i + 1: len(arrived) == n, f"request {i}")  # arrivals in order
    await asyncio.gather(*tasks)
    assert scaler.started == 1  # single flight: six waiters, one replica start
    assert order == list(range(6))  # the queue drains oldest first
    await pool.aclose()


async def test_demand_over_target_adds_replicas_up_to_the_max(
    tmp_path: Path, events: EventLog
) -> None:
    scaler = FakeScaler()
    pool = pool_for(scaler, events, max_replicas=3, container_concurrency=1, target=1.0)
    held = await asyncio.gather(*(pool.acquire() for _ in range(3)))
    assert scaler.started == 3 and len({t.replica.id for t in held}) == 3
    extra = asyncio.create_task(pool.acquire())
    await until(lambda: pool.queued == 1, "the extra request to queue")
    assert len(pool.replicas) == 3 and scaler.started == 3  # at the max: no fourth start
    assert not extra.done()  # it waits for a slot
    pool.release(held[0])
    held[0] = await asyncio.wait_for(extra, 1)
    for ticket in held:
        pool.release(ticket)
    await pool.aclose()


async def test_full_queue_is_refused_and_the_rest_answered(
    tmp_path: Path, events: EventLog
) -> None:
    pool = pool_for(FakeScaler(ready_after_s=0.1), events, queue_size=3, container_concurrency=3)
    results = await asyncio.gather(*(pool.acquire() for _ in range(5)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, QueueFull)]
    assert len(refused) == 2 and "queue full" in str(refused[0])
    assert all(isinstance(r, Ticket) for r in results[:3])
    for ticket in results[:3]:
        pool.release(ticket)  # type: ignore[arg-type]
    await pool.aclose()


async def test_deadline_while_cold_is_a_504_and_frees_its_place(
    tmp_path: Path, events: EventLog
) -> None:
    pool = pool_for(FakeScaler(ready_after_s=0.5), events)
    with pytest.raises(DeadlineExceeded, match="deadline"):
        await pool.acquire(deadline_s=0.05)
    assert pool.queued == 0
    ticket = await pool.acquire()  # the start went on: a later request gets the replica
    pool.release(ticket)
    await pool.aclose()


async def test_a_start_that_fails_fails_its_waiters_and_goes_back_to_zero(
    tmp_path: Path, events: EventLog
) -> None:
    pool = pool_for(FakeScaler(fail="exited with 1: bad weights"), events)
    results = await asyncio.gather(*(pool.acquire() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ModelUnavailable) and "bad weights" in str(r) for r in results)
    assert pool.state == "zero" and "bad weights" in pool.reason
    await pool.aclose()


async def test_never_ready_is_a_504_for_waiters(tmp_path: Path, events: EventLog) -> None:
    pool = pool_for(FakeScaler(ready_after_s=10), events, startup_timeout_s=0.1)
    with pytest.raises(DeadlineExceeded, match="not ready within"):
        await pool.acquire()
    assert pool.state == "zero"
    await pool.aclose()


async def test_keep_alive_scales_to_zero_and_a_request_wakes_it(
    tmp_path: Path, events: EventLog
) -> None:
    scaler = FakeScaler()
    pool = pool_for(scaler, events, keep_alive_s=0.2)
    ticket = await pool.acquire()
    released = time.monotonic()
    pool.release(ticket)
    assert pool.state == "ready"
    await until(lambda: pool.state != "ready", "keep-alive to expire")
    assert time.monotonic() - released >= 0.2  # ready for the whole keep-alive, not less
    await until(lambda: pool.state == "zero", "scale to zero")
    assert scaler.stopped == 1
    pool.release(await pool.acquire())
    assert scaler.started == 2
    await pool.aclose()
    events.flush()
    kinds = [e["event"] for e in read_events(tmp_path / "events.jsonl")]
    assert kinds.count("replica_ready") == 2 and "replica_stopped" in kinds


async def test_a_crashed_replica_is_replaced_for_the_queue(
    tmp_path: Path, events: EventLog
) -> None:
    scaler = FakeScaler()
    pool = pool_for(scaler, events, container_concurrency=1)
    first = await pool.acquire()
    queued = asyncio.create_task(pool.acquire())
    await until(lambda: pool.queued == 1, "the second request to queue")
    scaler.crash(first.replica.url)  # the proxy's request to it fails; the queue waits
    second = await asyncio.wait_for(queued, 2)
    assert second.replica is not first.replica and scaler.started == 2
    pool.release(first)
    pool.release(second)
    await pool.aclose()


async def test_a_cancelled_waiter_gives_back_its_place(tmp_path: Path, events: EventLog) -> None:
    pool = pool_for(FakeScaler(ready_after_s=0.2), events, queue_size=1)
    waiting = asyncio.create_task(pool.acquire())
    await until(lambda: pool.queued == 1, "the first request to queue")
    with pytest.raises(QueueFull):
        await pool.acquire()
    waiting.cancel()  # the client disconnected
    with pytest.raises(asyncio.CancelledError):
        await waiting
    ticket = await pool.acquire()  # its place is free again
    pool.release(ticket)
    assert pool.in_flight == 0
    await pool.aclose()


async def test_warm_and_sleep(tmp_path: Path, events: EventLog) -> None:
    scaler = FakeScaler()
    pool = pool_for(scaler, events, keep_alive_s=0.05)
    pool.warm(30, source="test")  # pool.sleep() ends it: a long window costs nothing
    await until(lambda: pool.state == "ready", "the warm replica")
    assert scaler.started == 1
    await asyncio.sleep(0.2)  # the behaviour under test: outlast the 0.05 s keep-alive
    assert pool.state == "ready" and scaler.stopped == 0  # the warm window holds it
    pool.sleep()
    await until(lambda: pool.state == "zero", "sleep to scale to zero")
    await pool.aclose()
    events.flush()
    assert any(e["event"] == "prewarm" for e in read_events(tmp_path / "events.jsonl"))


async def test_min_replicas_start_without_requests(tmp_path: Path, events: EventLog) -> None:
    scaler = FakeScaler()
    pool = pool_for(scaler, events, min_replicas=1, keep_alive_s=0.01)
    await until(lambda: pool.state == "ready", "the min_replicas replica")
    await asyncio.sleep(0.1)  # the behaviour under test: outlast the 0.01 s keep-alive
    assert pool.state == "ready" and scaler.started == 1 and scaler.stopped == 0
    await pool.aclose()
    assert scaler.stopped == 1
