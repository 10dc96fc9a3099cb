"""A group's books: levels from what a replica says of its members, sleeps the tiered policy
commands, wakes measured by the replica or against warm requests, and the keep-alive that
follows the members' plans. The replica is a small aiohttp server speaking the repository
endpoints, what it says comes through a fake of the scaler's status stream; time is a manual
clock."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from activator.admin import parse_unload_level
from activator.errors import BadRequest
from activator.events import EventLog
from activator.groups import Group, GroupPolicy
from activator.members import MemberPool
from activator.policy import History
from activator.pool import Replica, Ticket
from activator.replica_client import ReplicaClient
from activator.scalers.base import ReplicaHandle, StatusReport
from activator.states import PoolState, ReplicaState
from activator.tasks import TaskSet
from activator.testing import ManualClock
from contracts.replica import model_status
from contracts.stack import GroupSpec, load_stack


class FakeReplica:
    """The repository commands of a replica (the unloads and loads it got), and what it says of
    its members: through :meth:`statuses`, as a scaler's status stream brings it."""

    def __init__(self) -> None:
        self.index: list[dict[str, Any]] = []  # what a read of its index answers
        self.unloads: list[tuple[str, Any]] = []
        self.refuse = False
        self.asked = 0  # unloads asked, refused ones too
        self.loads: list[str] = []
        self.load_fails = False
        self._said: asyncio.Queue[StatusReport] = asyncio.Queue()
        self._sent = self._heard = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/repository/index", self._index)
        app.router.add_post("/v2/repository/models/{model}/unload", self._unload)
        app.router.add_post("/v2/repository/models/{model}/load", self._load)
        return app

    async def statuses(self, handle: ReplicaHandle) -> AsyncIterator[StatusReport]:
        first = True
        while True:
            report = await self._said.get()
            yield StatusReport(report.statuses, report.at, first=first)
            first = False
            self._heard += 1  # the group took it in before asking for the next

    async def say(self, entries: list[dict[str, Any]], *, at: float | None = None) -> None:
        """The replica says ``entries`` (its index's shape; malformed ones left out, as the
        client leaves them), said at ``at`` (default now); until the group has heard it."""
        statuses = []
        for raw in entries:
            try:
                statuses.append(model_status(raw))
            except (KeyError, TypeError, ValueError):
                continue
        self._said.put_nowait(StatusReport(tuple(statuses), time.monotonic() if at is None else at))
        self._sent += 1
        for _ in range(500):
            await asyncio.sleep(0)
            if self._heard == self._sent or (self._heard == self._sent - 1 and self._said.empty()):
                await asyncio.sleep(0)
                return
        raise AssertionError("the group never heard what the replica said")

    async def _index(self, request: web.Request) -> web.Response:
        return web.json_response(self.index)

    async def _load(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        self.loads.append(name)
        if self.load_fails:
            return web.json_response({"error": f"model '{name}' failed to load: gone"}, status=503)
        return web.json_response({"name": name, "loaded": True})

    async def _unload(self, request: web.Request) -> web.Response:
        self.asked += 1
        if self.refuse:
            return web.json_response({"error": "no"}, status=400)
        self.unloads.append((request.match_info["model"], await request.json()))
        return web.json_response({})


class StubPool:
    """What a group reads of its pool: its replicas."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.state, self.reason, self.start_failed = PoolState.READY, "", False

    async def aclose(self) -> None:
        pass


def group_spec(tmp_path: Path, **group: Any) -> GroupSpec:
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\n")
    entry = {"name": "g", "models": [{"config": "a.yaml"}, {"config": "b.yaml"}], **group}
    (tmp_path / "ember.yaml").write_text(json.dumps({"groups": [entry]}))
    return load_stack(tmp_path / "ember.yaml").groups["g"]


MADE: list[Group] = []


@pytest.fixture(autouse=True)
async def _closed() -> AsyncIterator[None]:
    """Every group a test made is closed after it (its HTTP session, its event log)."""
    yield
    while MADE:
        group = MADE.pop()
        await group.aclose()
        await commands_done(group)
        await group._client.aclose()
        group.events.close()


@pytest.fixture
async def replica() -> AsyncIterator[tuple[FakeReplica, Replica]]:
    fake = FakeReplica()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield (
            fake,
            Replica(
                1,
                0.0,
                state=ReplicaState.READY,
                handle=ReplicaHandle("g", f"http://127.0.0.1:{port}"),
            ),
        )
    finally:
        await runner.cleanup()


async def make_group(
    tmp_path: Path, replica: tuple[FakeReplica, Replica], **group: Any
) -> tuple[Group, ManualClock]:
    fake, r = replica
    spec = group_spec(tmp_path, **group)
    models = load_stack(tmp_path / "ember.yaml").models
    clock = ManualClock()
    made = Group(
        spec,
        models,
        lambda pool_spec, on_ready, policy: StubPool([r]),  # type: ignore[arg-type,return-value]
        EventLog(tmp_path / "events.jsonl"),
        client=ReplicaClient(),
        statuses=fake.statuses,
        tasks=TaskSet(),
        clock=clock,
    )
    MADE.append(made)
    made.replica_ready(r)
    return made, clock


async def commands_done(group: Group) -> None:
    """Until the sleeps the group sent have been answered (by real time: a local server)."""
    for _ in range(500):
        if not group.books.commanding:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a sleep command was never answered")


def logged(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == kind]


async def test_what_the_replica_says_is_the_truth_of_levels(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, _ = await make_group(tmp_path, replica)
    await fake.say(
        [
            {"name": "a", "state": "READY", "reason": ""},
            {"name": "b", "state": "SLEEPING", "reason": "level host", "level": "host"},
            {"name": "stranger", "state": "SLEEPING", "level": "disk"},
            {"name": "a", "state": "gibberish"},
        ]
    )
    assert (group.level(r, "a"), group.level(r, "b")) == ("hot", "host")
    assert group.awake_on("a")(r) and not group.awake_on("b")(r)
    assert (group.asleep("a"), group.asleep("b")) == (None, "host")  # what the index says
    group.events.flush()
    assert logged(tmp_path, "sleep") == []  # what a replica holds at its start is no sleep
    await fake.say(
        [
            {"name": "a", "state": "SLEEPING", "reason": "level disk", "level": "disk"},
            {"name": "b", "state": "READY", "reason": ""},
        ]
    )
    group.events.flush()
    assert (group.level(r, "a"), group.level(r, "b")) == ("disk", "hot")
    (sleep,) = logged(tmp_path, "sleep")
    assert sleep["model"] == "a" and sleep["level"] == "disk" and sleep["replica"] == 1
    assert "budget" in sleep["reason"]


async def test_a_waking_member_is_not_told_back_to_sleep_while_its_request_runs(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, _ = await make_group(tmp_path, replica)
    await fake.say([{"name": "a", "state": "SLEEPING", "reason": "level host", "level": "host"}])
    ticket = Ticket(r, 0.0, False)
    group.took("a", ticket)  # the replica wakes it: its index says SLEEPING meanwhile
    await fake.say(
        [{"name": "a", "state": "SLEEPING", "reason": "waking: level host", "level": "host"}]
    )
    assert group.level(r, "a") == "hot"
    group.released(ticket)
    group.events.flush()
    assert logged(tmp_path, "sleep") == []


async def test_the_tiered_policy_puts_an_idle_model_to_sleep_host_then_disk(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, clock = await make_group(
        tmp_path, replica, policy="tiered", wake={"host": 0.001}, host_hold_s=10, disk_hold_s=10
    )
    r.ready_at = clock.monotonic() + 1000  # b, never asked, counts from the replica's start
    await fake.say([])  # the replica says where its members are: awake
    ticket = Ticket(r, 0.0, False)
    group.took("a", ticket)
    group.released(ticket)
    plan = group.plan("a")
    assert plan.host_at_s == pytest.approx(1.2)  # 1200 device-seconds per wake-second
    await clock.advance(0.5)
    await group.tick()
    assert fake.unloads == []  # still in its hot window
    await clock.advance(1.0)
    await group.tick()
    await commands_done(group)
    assert fake.unloads == [("a", {"parameters": {"level": "host"}})]
    assert group.level(r, "a") == "host" and group.level(r, "b") == "hot"  # b was never asked
    await clock.advance(10)
    await group.tick()
    await commands_done(group)
    assert fake.unloads[-1] == ("a", {"parameters": {"level": "disk"}})
    group.events.flush()
    assert [e["level"] for e in logged(tmp_path, "sleep")] == ["host", "disk"]


async def test_a_refused_sleep_changes_no_books_and_is_asked_again_only_after_a_pause(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    fake.refuse = True
    group, clock = await make_group(tmp_path, replica, policy="tiered", wake={"host": 0.001})
    await fake.say([])  # the replica says where its members are: awake
    ticket = Ticket(r, 0.0, False)
    group.took("a", ticket)
    group.released(ticket)
    await clock.advance(5)
    await group.tick()
    await commands_done(group)
    assert group.level(r, "a") == "hot" and fake.asked == 1
    for _ in range(10):  # every tick for 50 s: not asked again
        await clock.advance(5)
        await group.tick()
    assert fake.asked == 1
    await clock.advance(15)
    await group.tick()
    await commands_done(group)
    assert fake.asked == 2  # a minute on, once more; then two minutes
    group.events.flush()
    assert logged(tmp_path, "sleep") == []


async def test_a_wake_is_measured_against_warm_requests_and_replans(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, clock = await make_group(tmp_path, replica, policy="tiered", wake={"host": 0.05})
    await fake.say([])  # the replica says where its members are: awake
    for _ in range(3):  # warm: 10 ms each
        ticket = Ticket(r, 0.0, False)
        group.took("a", ticket)
        await clock.advance(0.01)
        group.released(ticket)
    group.books.levels[r.id] = {"a": "host"}
    ticket = Ticket(r, 0.0, False)
    group.took("a", ticket)
    assert group.level(r, "a") == "hot"  # the replica wakes it for this request
    await clock.advance(0.04)
    group.released(ticket)
    group.events.flush()
    (wake,) = logged(tmp_path, "wake")
    assert wake["level"] == "host" and wake["wake_s"] == pytest.approx(0.03)
    assert group.wake_costs("a").host == pytest.approx(0.03)  # measured, not the given 0.05
    assert group.plan("a").host_at_s == pytest.approx(1200 * 0.03)


async def test_the_group_keep_alive_follows_the_latest_plan_to_zero(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    group, clock = await make_group(
        tmp_path, replica, policy="tiered", wake={"host": 0.001}, host_hold_s=10, disk_hold_s=20
    )
    group.arrived("a")
    await clock.advance(5)
    group.arrived("b")
    keep, _ = group.zero_after_s()
    assert keep == pytest.approx(1.2 + 10 + 20)  # b asked last: its plan decides
    decision = GroupPolicy(group).decide(History())
    assert decision.keep_alive_s == pytest.approx(keep) and decision.prewarm_s == 0
    fixed, _ = await make_group(tmp_path, replica, keep_alive_s=42)
    assert GroupPolicy(fixed).decide(History()).keep_alive_s == 42


async def test_the_keep_alive_counts_each_plan_from_its_members_last_end_not_arrival(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    """a's request arrives first and ends last (it waited 30 s for a cold start); b's, later and
    short, measured a wake that shortens b's plan. The replica stays until a's plan, counted
    from a's end, reaches zero (counted from a's arrival, it went while a slept at host)."""
    fake, r = replica
    group, clock = await make_group(
        tmp_path,
        replica,
        policy="tiered",
        wake={"host": 0.001, "disk": 0.002},
        host_hold_s=10,
        disk_hold_s=20,
    )
    await fake.say([{"name": "b", "state": "SLEEPING", "reason": "level host", "level": "host"}])
    cold = Ticket(r, 0.0, True)
    group.arrived("a")
    group.took("a", cold)
    await clock.advance(29)
    group.arrived("b")
    quick = Ticket(r, 0.0, False)
    group.took("b", quick)
    woke = {"name": "b", "state": "READY", "reason": "", "woke_from": "host", "wake_s": 0.01}
    await fake.say([woke])
    await clock.advance(0.5)
    group.released(quick)
    assert group.plan("b").zero_at_s == pytest.approx(2.4 + 20)  # host (0.01 s) is skipped
    assert group.plan("a").zero_at_s == pytest.approx(1.2 + 10 + 20)
    assert group.zero_after_s()[0] == pytest.approx(1.2 + 10 + 20)  # a's still runs
    await clock.advance(0.5)
    group.released(cold)
    assert group.zero_after_s()[0] == pytest.approx(1.2 + 10 + 20)  # a ended last


@pytest.mark.parametrize(
    ("body", "level"),
    [
        (b"", None),
        (b"{}", None),
        (b'{"parameters": {}}', None),
        (b'{"parameters": {"level": "host"}}', "host"),
        (b'{"parameters": {"level": "disk"}}', "disk"),
    ],
)
def test_an_unload_body_names_a_level_or_none(body: bytes, level: str | None) -> None:
    assert parse_unload_level(body) == level


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"parameters": {"level": "gpu"}}', "unknown sleep level 'gpu'; choose 'host', 'disk'"),
        (b'{"parameters": "host"}', "parameters must be an object"),
        (b'{"parameters": []}', "parameters must be an object"),
        (b'{"parameters": false}', "parameters must be an object"),
        (b"[1]", "must be a JSON object"),
        (b"{nope", "must be JSON"),
        (b'{"level": "host"}', """unknown key 'level' (it goes under "parameters")"""),
        (b'{"parameters": {}, "force": true}', "unknown key 'force'"),
    ],
)
def test_a_bad_unload_body_is_a_400_naming_the_choices(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)) as caught:
        parse_unload_level(body)
    assert caught.value.status_code == 400


async def test_an_unload_with_a_level_sleeps_the_member_on_every_replica_and_answers_after(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, _ = await make_group(tmp_path, replica)
    assert await group.sleep_member("b", "host", "put to sleep by a test") == []
    assert fake.unloads == [("b", {"parameters": {"level": "host"}})]  # answered: done
    assert group.level(r, "b") == "host"
    assert await group.sleep_member("b", "host", "again") == []  # already there: nothing sent
    assert len(fake.unloads) == 1
    fake.refuse = True
    (refusal,) = await group.sleep_member("b", "disk", "deeper")
    assert refusal.status == 400 and str(refusal).startswith("400: ")
    assert group.level(r, "b") == "host"


FAILED = {
    "name": "a",
    "state": "UNAVAILABLE",
    "reason": "load failed: weights file /tier/a/model.safetensors does not exist",
    "failure": "weights_missing",
}


async def test_a_member_that_failed_on_every_replica_is_unavailable_with_the_reason(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, clock = await make_group(tmp_path, replica, policy="tiered", wake={"host": 0.001})
    member = MemberPool(group, "a", group._members["a"].spec)
    r.ready_at = clock.monotonic()
    assert member.state == "ready" and group.unavailable("a") is None  # not read yet
    await fake.say([FAILED, {"name": "b", "state": "READY", "reason": ""}])
    assert group.unavailable("a") == FAILED["reason"] and group.unavailable("b") is None
    assert (member.state, member.reason, member.start_failed) == (
        "unavailable",
        FAILED["reason"],
        True,
    )
    assert not group.awake_on("a")(r) and group.awake_on("b")(r)
    described = group.describe("a")
    assert described["unavailable_on"] == {"1": FAILED["reason"]}
    await clock.advance(600)  # idle for long: the tiered policy leaves a failed model be
    await group.tick()
    await commands_done(group)
    assert [u[0] for u in fake.unloads] == ["b"]
    await fake.say([{"name": "a", "state": "READY", "reason": ""}])  # loaded again by hand
    assert group.unavailable("a") is None and member.state == "ready"


async def test_a_failure_the_replica_tells_during_a_request_is_booked_at_once(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, _ = await make_group(tmp_path, replica)
    await fake.say([{"name": "a", "state": "READY", "reason": ""}])
    ticket = Ticket(r, 0.0, False)
    group.took("a", ticket)
    await fake.say([FAILED])  # its wake failed on the replica: the request gets 503
    assert group.unavailable("a") == FAILED["reason"]
    group.released(ticket, answered=False)
    assert group.unavailable("a") == FAILED["reason"]


async def test_what_a_replica_said_before_a_request_or_command_touched_a_member_is_stale(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, _ = await make_group(tmp_path, replica)
    await fake.say([{"name": "a", "state": "READY", "reason": ""}])
    said = time.monotonic()  # an index read asked now, answered after the request below
    ticket = Ticket(r, 0.0, False)
    group.took("a", ticket)
    group.released(ticket)
    asleep = {"name": "a", "state": "SLEEPING", "reason": "level host", "level": "host"}
    await fake.say([asleep], at=said)
    assert group.level(r, "a") == "hot"  # the request woke it since
    await fake.say([asleep])
    assert group.level(r, "a") == "host"


async def test_a_wake_is_the_replicas_own_measure_when_it_tells_one(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, clock = await make_group(tmp_path, replica, policy="tiered", wake={"host": 0.05})
    await fake.say([{"name": "a", "state": "SLEEPING", "reason": "level host", "level": "host"}])
    ticket = Ticket(r, 0.0, False)
    group.took("a", ticket)
    woke = {"name": "a", "state": "READY", "reason": "", "woke_from": "host", "wake_s": 0.021}
    await fake.say([woke])
    await clock.advance(0.5)  # the request's own time says nothing of the wake now
    group.released(ticket)
    group.events.flush()
    (wake,) = logged(tmp_path, "wake")
    assert wake["level"] == "host" and wake["wake_s"] == pytest.approx(0.021)
    assert group.wake_costs("a").host == pytest.approx(0.021)


async def test_a_load_through_the_group_retries_a_failed_member_on_every_replica(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, _ = await make_group(tmp_path, replica)
    await fake.say([FAILED])
    fake.load_fails = True
    (refusal,) = await group.load_member("a", timeout_s=5)
    assert refusal.status == 503 and "failed to load: gone" in refusal.detail
    assert group.unavailable("a") == FAILED["reason"]
    fake.load_fails = False
    assert await group.load_member("a", timeout_s=5) == []
    assert fake.loads == ["a", "a"] and group.unavailable("a") is None
    assert group.level(r, "a") == "hot"


async def test_a_load_the_replica_refused_reads_its_index_for_what_it_said_meanwhile(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, _ = replica
    group, _ = await make_group(tmp_path, replica)
    await fake.say([{"name": "a", "state": "READY", "reason": ""}])
    fake.load_fails = True
    fake.index = [FAILED]  # said (and not heard) while the load command was in flight
    (refusal,) = await group.load_member("a", timeout_s=5)
    assert refusal.status == 503
    assert group.unavailable("a") == FAILED["reason"]


async def test_a_refused_request_the_replica_woke_for_leaves_the_member_awake(
    tmp_path: Path, replica: tuple[FakeReplica, Replica]
) -> None:
    fake, r = replica
    group, _ = await make_group(tmp_path, replica)
    await fake.say([{"name": "a", "state": "SLEEPING", "reason": "level host", "level": "host"}])
    ticket = Ticket(r, 0.0, False)
    group.took("a", ticket)
    await fake.say([{"name": "a", "state": "READY", "woke_from": "host", "wake_s": 0.01}])
    group.released(ticket, answered=False)  # a 4xx: the model was woken all the same
    assert group.level(r, "a") == "hot"
