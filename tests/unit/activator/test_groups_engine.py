"""A command engine alone in its group: put to sleep and woken through its own server's calls
(vLLM's ``/sleep?level=N`` and ``/wake_up``), its levels booked from their answers, and a request
that finds it asleep held until it is awake. The engine is a small aiohttp server that sleeps
and wakes as vLLM does (a sleep while it sleeps is ignored) and answers nothing else; what the
scaler's status stream says comes through test_groups' fake; time is a manual clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from activator.errors import DeadlineExceeded, ModelUnavailable
from activator.events import EventLog
from activator.groups import Group
from activator.members import MemberPool
from activator.pool import Replica, Ticket
from activator.replica_client import ReplicaClient
from activator.scalers.base import ReplicaHandle
from activator.states import ReplicaState
from activator.tasks import TaskSet
from activator.testing import ManualClock
from activator.tiered import Level
from contracts.stack import load_stack
from tests.unit.activator.test_groups import FakeReplica, StubPool, commands_done, logged

VLLM_SLEEP = {"host": "POST /sleep?level=1", "disk": "POST /sleep?level=2"}
RELOAD = {"call": "POST /collective_rpc", "body": {"method": "reload_weights"}}


class FakeEngine:
    """vLLM's sleep mode: every call it got (``METHOD /path?query``, and a body's JSON)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.bodies: list[Any] = []
        self.level: int | None = None  # vLLM's sleep level, None awake
        self.fail = ""  # a path answered 500
        self.gate: asyncio.Event | None = None  # a wake waits on it when set

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        return app

    def got(self, call: str) -> int:
        return self.calls.count(call)

    async def _any(self, request: web.Request) -> web.Response:
        self.calls.append(f"{request.method} {request.path_qs}")
        if request.can_read_body:
            self.bodies.append(await request.json())
        if request.path == self.fail:
            return web.json_response({"error": "CUDA out of memory"}, status=500)
        if request.path == "/sleep":
            if self.level is None:  # asleep already: vLLM ignores it
                self.level = int(request.query.get("level", "1"))
            return web.Response()
        if request.path == "/wake_up":
            if self.gate is not None:
                await self.gate.wait()
            self.level = None
            return web.Response()
        if request.path == "/collective_rpc":
            return web.json_response({"results": [None]})
        return web.json_response({"error": "not found"}, status=404)  # no /v2 here


class SlotPool(StubPool):
    """The group's pool as a member's requests take it: one slot after another on its replica."""

    def try_acquire(self, prefer: Callable[[Replica], bool] | None = None) -> Ticket:
        self.replicas[0].in_flight += 1
        return Ticket(self.replicas[0], 0.0, False)

    async def acquire(
        self, deadline_s: float, prefer: Callable[[Replica], bool] | None = None
    ) -> Ticket:
        return self.try_acquire(prefer)

    def release(self, ticket: Ticket, *, answered: bool = True) -> None:
        ticket.replica.in_flight -= 1


@pytest.fixture
async def engine() -> AsyncIterator[tuple[FakeEngine, Replica]]:
    fake = FakeEngine()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake, Replica(1, 0.0, state=ReplicaState.READY, handle=ReplicaHandle("g", url))
    finally:
        await runner.cleanup()


@pytest.fixture
async def made() -> AsyncIterator[list[Group]]:
    groups: list[Group] = []
    yield groups
    for group in groups:
        await group.aclose()
        await group.tasks.aclose()
        await group._client.aclose()
        group.events.close()


async def engine_group(
    tmp_path: Path,
    replica: Replica,
    made: list[Group],
    *,
    sleep: dict[str, Any] | None = None,
    wake_calls: Any = "POST /wake_up",
    **group: Any,
) -> tuple[Group, MemberPool, ManualClock]:
    """A group of the command engine ``e`` alone, on ``replica``, which has said it is ready."""
    model = {"name": "e", "engine": "command", "command": ["serve", "{port}"]}
    model |= {"sleep": sleep or VLLM_SLEEP, "wake": wake_calls}  # (the group's wake: seconds)
    (tmp_path / "e.yaml").write_text(json.dumps(model))
    entry = {"name": "g", "models": [{"config": "e.yaml"}], **group}
    (tmp_path / "ember.yaml").write_text(json.dumps({"groups": [entry]}))
    stack = load_stack(tmp_path / "ember.yaml")
    clock = ManualClock()
    status = FakeReplica()
    made_group = Group(
        stack.groups["g"],
        stack.models,
        lambda spec, on_ready, policy: SlotPool([replica]),  # type: ignore[arg-type,return-value]
        EventLog(tmp_path / "events.jsonl"),
        client=ReplicaClient(),
        statuses=status.statuses,
        tasks=TaskSet(),
        clock=clock,
    )
    made.append(made_group)
    made_group.replica_ready(replica)
    replica.ready_at = clock.monotonic()
    await status.say([{"name": "e", "state": "READY", "reason": ""}])  # what its process says
    return made_group, MemberPool(made_group, "e", stack.models["e"]), clock


async def until(condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds (by real time: the engine is a local server)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


TIERED = {"policy": "tiered", "wake": {"host": 0.001, "disk": 0.002}}


async def test_the_tiered_policy_sleeps_an_engine_through_its_calls_host_then_disk(
    tmp_path: Path, engine: tuple[FakeEngine, Replica], made: list[Group]
) -> None:
    fake, r = engine
    calls = {"host": "POST /wake_up", "disk": ["POST /wake_up", RELOAD]}
    group, member, clock = await engine_group(
        tmp_path, r, made, wake_calls=calls, host_hold_s=10, disk_hold_s=10, **TIERED
    )
    await clock.advance(1.0)
    await group.tick()
    assert fake.calls == []  # hot for 1.2 s: 1,200 device-seconds per second of wake
    await clock.advance(0.5)
    await group.tick()
    await commands_done(group)
    assert fake.calls == ["POST /sleep?level=1"] and fake.level == 1
    assert group.level(r, "e") == "host" and group.asleep("e") == "host"
    await clock.advance(10)
    await group.tick()
    await commands_done(group)
    # vLLM ignores a sleep while it sleeps: woken from host first, then down to level 2
    assert fake.calls[1:] == ["POST /wake_up", "POST /sleep?level=2"] and fake.level == 2
    assert group.level(r, "e") == "disk"
    group.events.flush()
    sleeps = logged(tmp_path, "sleep")
    assert [(e["model"], e["level"], e["group"]) for e in sleeps] == [
        ("e", "host", "g"),
        ("e", "disk", "g"),
    ]
    assert logged(tmp_path, "wake") == []  # going deeper is no wake of a request's

    assert member.try_acquire() is None  # asleep: not relayed at once
    assert r.in_flight == 0
    ticket = await member.acquire()
    # woken from disk by the calls for disk, in order, before the slot is handed over
    assert fake.calls[3:] == ["POST /wake_up", "POST /collective_rpc"] and fake.level is None
    assert fake.bodies == [{"method": "reload_weights"}]
    assert group.level(r, "e") == "hot" and group.serves_now("e", r)
    member.release(ticket)
    group.events.flush()
    (woke,) = logged(tmp_path, "wake")
    assert woke["level"] == "disk" and woke["wake_s"] > 0  # measured around the calls
    assert group.wake_costs("e").disk == pytest.approx(woke["wake_s"])
    assert not [c for c in fake.calls if "/v2/" in c]  # no repository command, no index read


async def test_requests_that_find_it_asleep_share_one_wake_and_a_failed_one_is_a_503(
    tmp_path: Path, engine: tuple[FakeEngine, Replica], made: list[Group]
) -> None:
    fake, r = engine
    group, member, _ = await engine_group(tmp_path, r, made)
    assert await group.sleep_member("e", Level.HOST, "put to sleep by a test") == []
    fake.fail = "/wake_up"
    with pytest.raises(ModelUnavailable, match=r"did not wake \(500: POST /wake_up: ") as caught:
        await member.acquire()
    assert caught.value.status_code == 503
    assert r.in_flight == 0 and member.in_flight == 0  # its slot given back
    assert group.level(r, "e") == "host"  # still asleep: the next request tries again

    fake.fail, fake.gate = "", asyncio.Event()
    first = asyncio.ensure_future(member.acquire())
    second = asyncio.ensure_future(member.acquire())
    left = asyncio.ensure_future(member.acquire())
    await until(lambda: fake.got("POST /wake_up") == 2)  # the wake call at the server
    assert not (first.done() or second.done())
    left.cancel()  # a client that leaves gives its slot back; the wake goes on
    with pytest.raises(asyncio.CancelledError):
        await left
    with pytest.raises(DeadlineExceeded, match=r"not awake within the request's 0\.05s deadline"):
        await member.acquire(0.05)  # so does one whose deadline passes first (504)
    assert r.in_flight == 2
    fake.gate.set()
    tickets = [await first, await second]
    assert fake.got("POST /wake_up") == 2  # one failed, one shared by the three
    assert r.in_flight == 2 and group.serves_now("e", r)
    for ticket in tickets:
        member.release(ticket)
    assert member.try_acquire() is not None  # awake: the warm path again

    # the only client leaves while the wake is under way: booked awake once it is
    assert await group.sleep_member("e", Level.HOST, "again") == []
    fake.gate = asyncio.Event()
    alone = asyncio.ensure_future(member.acquire())
    await until(lambda: fake.got("POST /wake_up") == 3)
    alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alone
    assert group.level(r, "e") == "host"
    fake.gate.set()
    await until(lambda: group.level(r, "e") == "hot")
    assert group.serves_now("e", r)


async def test_a_level_without_a_call_is_skipped(
    tmp_path: Path, engine: tuple[FakeEngine, Replica], made: list[Group]
) -> None:
    fake, r = engine
    (tmp_path / "disk").mkdir()
    disk_only = {"disk": "POST /sleep?level=2"}
    group, _, clock = await engine_group(tmp_path / "disk", r, made, sleep=disk_only, **TIERED)
    assert group.plan("e").host_at_s == group.plan("e").disk_at_s  # no time at host
    await clock.advance(3)  # past its hot window: 1,200 x the disk wake
    await group.tick()
    await commands_done(group)
    assert fake.calls == ["POST /sleep?level=2"]
    assert await group.sleep_member("e", Level.HOST, "a test") == []  # at disk, deeper already
    assert fake.calls == ["POST /sleep?level=2"]

    (tmp_path / "host").mkdir()
    fake.calls.clear()
    host_only = {"host": "POST /sleep?level=1"}
    r2 = Replica(2, 0.0, state=ReplicaState.READY, handle=r.handle)
    group, _, clock = await engine_group(tmp_path / "host", r2, made, sleep=host_only, **TIERED)
    for _ in range(8):  # idle for hours: at host, never asked for disk
        await clock.advance(3600)
        await group.tick()
        await commands_done(group)
    assert fake.calls == ["POST /sleep?level=1"] and group.level(r2, "e") == "host"
    (refusal,) = await group.sleep_member("e", Level.DISK, "a test")
    assert "no sleep call for level disk or deeper" in str(refusal)


async def test_a_refused_sleep_names_the_call_and_a_load_wakes_it(
    tmp_path: Path, engine: tuple[FakeEngine, Replica], made: list[Group]
) -> None:
    fake, r = engine
    group, _, _ = await engine_group(tmp_path, r, made)
    fake.fail = "/sleep"
    (refusal,) = await group.sleep_member("e", Level.HOST, "a test")
    assert str(refusal).startswith("500: POST /sleep?level=1: ") and "out of memory" in str(refusal)
    assert group.level(r, "e") == "hot"
    fake.fail = ""
    assert await group.sleep_member("e", Level.DISK, "a test") == []
    assert await group.load_member("e", timeout_s=5) == []  # a repository load: awake
    assert fake.calls[-1] == "POST /wake_up" and group.level(r, "e") == "hot"
    assert not [c for c in fake.calls if "/v2/" in c]
