"""Groups: several models served by the same replicas, each awake or asleep on each of them.

A group's replicas are one :class:`~activator.pool.ModelPool`, named after the group and started
from its pool spec: they start, scale, stay and stop as a single model's do, every replica
serving every member (``ember serve`` with each member's config and the group's budgets). The
rest of the activator sees each member through a :class:`MemberPool` (the face of a pool, with
the member's name and spec): its requests take slots on the group's replicas, preferring one
where the member is awake.

:class:`Group` keeps the books (:class:`~activator.group_books.Books`) of which member sleeps at
which level on which replica (``hot``, ``host``, ``disk``), from what it commanded, what the
requests found and what each replica says
of its members through the scaler (:meth:`~activator.scalers.base.Scaler.statuses`: a local
replica's status pipe as it speaks, a Knative service's index as it is read): a replica's device
memory budget puts models to sleep on its own. A wake's seconds are the replica's own measure
(the status that ends it), else a waking request's time less the median of the member's warm
requests.
With ``policy: tiered`` it puts idle members to sleep as :class:`~activator.tiered.Tiered` plans
from each member's idle times and the wake times it has measured (a waking request's time less
the median of the member's warm requests), and the group's replicas go when every member's plan
has reached zero. Events: ``sleep`` (``level``, ``replica``, ``group``, ``reason``) and ``wake``
(the ``level`` it woke from, ``wake_s``).

A member a replica reports ``UNAVAILABLE`` (its load or wake failed there, with the reason) is
booked as failed on that replica until the replica reports it serving again: requests prefer
the replicas where it serves, the policy leaves it be, and where it fails on every ready replica
the activator's views say so (:meth:`Group.unavailable`). A repository load through the
activator asks every replica to load it again (:meth:`Group.load_member`).

A command engine that names its sleep and wake calls may be a group's only member: it is put to
sleep and woken through those calls (:class:`~activator.engine_sleep.EngineSleep`), its levels
booked from their answers, and a request that finds it asleep is relayed once it is awake
(:meth:`Group.serves_now`, :meth:`Group.wake_for`); a level it has no call for is skipped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from activator.engine_sleep import EngineSleep
from activator.errors import DeadlineExceeded, ModelUnavailable
from activator.events import EventLog
from activator.group_books import Books
from activator.policy import Decision, History, Policy
from activator.pool import ModelPool, Replica, Ticket
from activator.pool.clock import Clock
from activator.replica_client import Refusal, ReplicaClient
from activator.scalers.base import ReplicaHandle, StatusReport
from activator.states import ReplicaState
from activator.tasks import TaskSet
from activator.tiered import SLEEP_LEVELS, Level, Tiered, TierPlan, WakeCosts
from contracts.events import Sleep, Wake
from contracts.stack import GroupSpec, ModelSpec

log = logging.getLogger("ember.activator")

SLEEP_TIMEOUT_S = 60.0  # an unload with a level waits for the model's batches first
REFUSED_S, REFUSED_MAX_S = 60.0, 900.0  # the pause after a replica refused a sleep, doubling


@dataclass
class _Member:
    """What the group knows of one member: its arrivals, requests and measured wakes."""

    spec: ModelSpec
    history: History = field(default_factory=History)
    in_flight: int = 0
    last_end: float | None = None  # monotonic: when its last request finished
    warm_s: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=64))
    wakes: dict[str, float] = field(default_factory=dict)  # level -> measured seconds (EWMA)
    plan: TierPlan | None = None
    planned_at: int = -1  # history.observed when planned


class Group:
    """One group's replicas and the levels of its members on them."""

    def __init__(
        self,
        spec: GroupSpec,
        members: dict[str, ModelSpec],
        pool_factory: Callable[[ModelSpec, Callable[[Replica], None], Policy], ModelPool],
        events: EventLog,
        *,
        client: ReplicaClient,
        statuses: Callable[[ReplicaHandle], AsyncIterator[StatusReport]],
        tasks: TaskSet,
        clock: Clock,
        tick_s: float = 0.5,
    ) -> None:
        self.spec, self.name = spec, spec.name
        self.events, self.tasks, self.clock = events, tasks, clock
        self.tick_s = tick_s
        self._members = {name: _Member(members[name]) for name in spec.members}
        self._wake_defaults = WakeCosts(**{k: v for k, v in spec.wake.items()})
        self._tiered = spec.policy == "tiered"
        self.books = Books(self._members, self._slept)
        self._refused: dict[tuple[int, str], tuple[float, int]] = {}  # retry after, refusals
        self._sleeps: set[asyncio.Task[Refusal | None]] = set()
        self._watches: dict[int, asyncio.Task[None]] = {}
        # id(ticket) -> (member, when, its level then: None before the replica said)
        self._tickets: dict[int, tuple[str, float, Level | None]] = {}
        self._client, self._statuses = client, statuses
        engine_calls = {n: m.spec.engine_calls for n, m in self._members.items()}
        self._engines = EngineSleep(
            {n: calls for n, calls in engine_calls.items() if calls is not None},
            client,
            woke=self._engine_woke,
            spawn=lambda coro, name: tasks.spawn(coro, name=name),
        )
        self._loop: asyncio.Task[None] | None = None
        self.pool: ModelPool = pool_factory(spec.pool, self.replica_ready, GroupPolicy(self))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.pool.start()
        self._loop = self.tasks.spawn(self._run(), name=f"group-{self.name}")

    async def aclose(self) -> None:
        loops = [t for t in (self._loop, *self._sleeps, *self._watches.values()) if t]
        for task in loops:
            task.cancel()
        if loops:
            await asyncio.wait(loops)
        await self.pool.aclose()

    def replica_ready(self, replica: Replica) -> None:
        """A replica of the group is ready: hear what it says of its members from now on."""
        if replica.id not in self._watches:
            task = self.tasks.spawn(self._watch(replica), name=f"group-{self.name}-watch")
            self._watches[replica.id] = task

    async def _watch(self, replica: Replica) -> None:
        if replica.handle is None:  # a ready replica has one
            return
        try:
            async for report in self._statuses(replica.handle):
                self.books.heard(replica.id, report)
        except Exception:  # a bug of ours must not go unsaid: the books stop following it
            log.exception("group %s: hearing replica %d failed", self.name, replica.id)

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.tick_s)
            try:
                await self.tick()
            except Exception:  # a bug of ours must not stop the group's upkeep
                log.exception("group %s: its sleep controller failed a tick", self.name)

    async def tick(self) -> None:
        """Forget gone replicas, and put idle members to sleep."""
        alive = {r.id for r in self.pool.replicas}
        books = self.books
        for rid in {*books.levels, *books.seen, *books.failed, *self._watches} - alive:
            books.forget(rid)
            self._engines.forget(rid)
            for key in [k for k in self._refused if k[0] == rid]:
                del self._refused[key]
            watch = self._watches.pop(rid, None)
            if watch is not None:
                watch.cancel()
        if self._tiered:
            now = self.clock.monotonic()
            for replica in [r for r in self.pool.replicas if r.state is ReplicaState.READY]:
                for name in self._members:
                    self._maybe_sleep(replica, name, now)

    # ------------------------------------------------------------------ levels
    def level(self, replica: Replica, model: str) -> Level:
        return self.books.level(replica.id, model)

    def awake_on(self, model: str) -> Callable[[Replica], bool]:
        """The ``prefer`` of a claim for ``model``: replicas where it is awake (and serves)."""
        return lambda replica: self.books.awake(replica.id, model)

    def _heard_from(self) -> list[Replica]:
        """The group's ready replicas that have said where their members are."""
        return [
            r
            for r in self.pool.replicas
            if r.state is ReplicaState.READY and r.id in self.books.seen
        ]

    def asleep(self, model: str) -> Level | None:
        """The level ``model`` sleeps at on the group's ready replicas heard from, when it
        sleeps on every one of them (the shallowest, where they differ: a request wakes it from
        there); None while it is awake on one, or none has been heard from."""
        levels = {self.level(r, model) for r in self._heard_from()}
        if not levels or Level.HOT in levels:
            return None
        return min(levels, key=lambda level: level.depth)

    def unavailable(self, model: str) -> str | None:
        """Why ``model`` cannot serve on any of the group's ready replicas heard from (the
        first one's reason), if it cannot on every one of them; else None."""
        reasons = [self.books.failed.get(r.id, {}).get(model) for r in self._heard_from()]
        if not reasons or any(reason is None for reason in reasons):
            return None
        return reasons[0]

    def _slept(self, rid: int, model: str, level: Level, reason: str) -> None:
        self.events.emit(
            Sleep(model=model, group=self.name, replica=rid, level=level, reason=reason)
        )
        log.info("model %s sleeps (level %s) on replica %d: %s", model, level, rid, reason)

    def _maybe_sleep(self, replica: Replica, name: str, now: float) -> None:
        member = self._members[name]
        key = (replica.id, name)
        if self.books.busy(key) or replica.id not in self.books.seen:
            return
        if name in self.books.failed.get(replica.id, {}):
            return  # nothing to put away: its load failed there
        refused = self._refused.get(key)
        if refused is not None and now < refused[0]:
            return
        # a member never asked on this replica counts its idle time from the replica's start
        since = member.last_end if member.last_end is not None else replica.ready_at
        if since is None:
            return
        plan = self.plan(name)
        target = plan.level_at(now - since)
        target = Level.DISK if target is Level.ZERO else target  # zero is the replicas' to reach
        # a level it cannot sleep at (a command engine's without a call): the one above
        deepest = self._sleep_level(name, at_most=target)
        if deepest is None or deepest.depth <= self.level(replica, name).depth:
            return
        target = deepest
        reason = f"tiered policy: idle {now - since:.0f}s ({plan.why})"
        self.books.command(key)
        task = self.tasks.spawn(self._sleep(replica, name, target, reason), name=f"sleep-{name}")
        self._sleeps.add(task)
        task.add_done_callback(self._sleeps.discard)

    async def _sleep(
        self, replica: Replica, name: str, level: Level, reason: str
    ) -> Refusal | None:
        """Ask ``replica`` to put ``name`` to sleep at ``level``: None once it has, else why not.

        A refusal (the handler cannot sleep, the model is busy, the replica does not answer)
        changes no books, and the policy asks that replica again only after a pause that
        doubles with each refusal (a minute, up to a quarter of an hour)."""
        key = (replica.id, name)  # counted in books.commanding by the caller, as it decided
        claims_before = self.books.claim_counts.get(key, 0)
        on_replica = level.on_replica
        assert on_replica is not None and level is not Level.ZERO
        engine = name in self._engines
        try:
            if engine:  # its server's own calls
                refusal = await self._engines.sleep(replica.url, key, on_replica)
            else:
                refusal = await self._client.sleep(replica.url, name, on_replica, SLEEP_TIMEOUT_S)
        finally:
            self.books.commanded(key)
        if replica not in self.pool.replicas:
            return refusal  # gone meanwhile: its books went with it
        if refusal is not None:
            _, count = self._refused.get(key, (0.0, 0))
            pause = min(REFUSED_MAX_S, REFUSED_S * 2**count)
            self._refused[key] = (self.clock.monotonic() + pause, count + 1)
            log.warning(
                "model %s: replica %d did not sleep (%s); asked again in %.0fs at the earliest",
                name,
                replica.id,
                refusal,
                pause,
            )
            if not engine:
                await self._reread(replica)  # what it said while refusing was not heard
            return refusal
        self._refused.pop(key, None)
        if self.books.claim_counts.get(key, 0) == claims_before:
            self.books.set_level(replica.id, name, level, reason)
        elif engine:  # it slept: the request that came meanwhile wakes it before it is relayed
            self._slept(replica.id, name, level, reason)
        # else a request came meanwhile and woke it, or will: what the replica says next tells
        return None

    async def sleep_member(self, name: str, level: Level, reason: str) -> list[Refusal]:
        """Put ``name`` to sleep at ``level`` on every ready replica where it is awake or sleeps
        lighter (a repository unload with a level, the admin API's sleep), once each has
        answered; why each replica that did not refused."""
        level = Level(level)
        if name in self._engines:  # the level its server sleeps at, from those it has calls for
            deeper = [lv for lv in self._levels(name) if lv.depth >= level.depth]
            if not deeper:
                why = f"model '{name}': its server has no sleep call for level {level} or deeper"
                return [Refusal(None, why)]
            level = min(deeper, key=lambda lv: lv.depth)
        sleeps = []
        for replica in self.pool.replicas:
            if (
                replica.state is ReplicaState.READY
                and self.level(replica, name).depth < level.depth
            ):
                self.books.command((replica.id, name))
                sleeps.append(self._sleep(replica, name, level, reason))
        refusals = await asyncio.gather(*sleeps)
        return [r for r in refusals if r is not None]

    async def load_member(self, name: str, timeout_s: float) -> list[Refusal]:
        """Load ``name`` on every ready replica (a repository load: it wakes a sleeper and
        retries a failed load), once each has answered; why each replica that did not."""
        ready = [r for r in self.pool.replicas if r.state is ReplicaState.READY]
        loads = await asyncio.gather(*(self._load(r, name, timeout_s) for r in ready))
        return [r for r in loads if r is not None]

    async def _load(self, replica: Replica, name: str, timeout_s: float) -> Refusal | None:
        key = (replica.id, name)
        engine = name in self._engines
        self.books.command(key)
        try:
            if engine:  # loaded as long as its server runs: a load wakes it
                refusal = await self._engines.wake(replica.url, key)
            else:
                refusal = await self._client.load(replica.url, name, timeout_s)
        finally:
            self.books.commanded(key)
        if replica not in self.pool.replicas:
            return refusal  # gone meanwhile: its books went with it
        if refusal is not None:
            log.warning("model %s: replica %d did not load it (%s)", name, replica.id, refusal)
        else:
            self.books.loaded(replica.id, name)
        if not engine:
            await self._reread(replica)  # what it said while loading (a failure, a sleep)
        return refusal

    async def _reread(self, replica: Replica) -> None:
        """Read ``replica``'s index: what it said while a command of ours was in flight was
        not heard (stale for that member), and a replica says a state once."""
        asked = time.monotonic()
        statuses = await self._client.index(replica.url)
        if statuses is not None and replica in self.pool.replicas:
            self.books.heard(replica.id, StatusReport(tuple(statuses), asked))

    def _levels(self, name: str) -> frozenset[Level]:
        """The levels ``name`` can sleep at: a command engine's, those it has calls for."""
        return self._engines.levels(name) if name in self._engines else frozenset(SLEEP_LEVELS)

    def _sleep_level(self, name: str, *, at_most: Level) -> Level | None:
        """The deepest level ``name`` can sleep at, no deeper than ``at_most`` (None: none)."""
        fits = [level for level in self._levels(name) if level.depth <= at_most.depth]
        return max(fits, key=lambda level: level.depth) if fits else None

    def _engine_woke(self, key: tuple[int, str], level: Level, wake_s: float) -> None:
        """A command engine woke (its calls answered): measured as a replica measures its own."""
        if any(r.id == key[0] for r in self.pool.replicas):
            self.books.woke(key, level, wake_s)

    # ------------------------------------------------------------------ requests
    def serves_now(self, name: str, replica: Replica) -> bool:
        """Whether a request for ``name`` may be relayed to ``replica`` at once: not when its
        command engine sleeps there, or a call to it is under way (:meth:`wake_for` first)."""
        return name not in self._engines or self._engines.awake((replica.id, name))

    async def wake_for(self, name: str, ticket: Ticket, deadline_s: float) -> None:
        """A request for ``name`` holds ``ticket``: its command engine awake there first, if
        it sleeps (Ember's own replicas wake a model for a request themselves), within the
        request's ``deadline_s`` (DeadlineExceeded, 504; the wake goes on). ModelUnavailable
        (503) with the call's answer when its server did not wake."""
        if name not in self._engines:
            return
        replica = ticket.replica
        try:
            async with asyncio.timeout(deadline_s):
                refusal = await self._engines.wake(replica.url, (replica.id, name))
        except TimeoutError:
            raise DeadlineExceeded(
                f"model '{name}': its server on replica {replica.id} was not awake within the "
                f"request's {deadline_s:g}s deadline"
            ) from None
        if refusal is not None:
            log.warning("model %s: replica %d did not wake (%s)", name, replica.id, refusal)
            raise ModelUnavailable(
                f"model '{name}': its server on replica {replica.id} did not wake ({refusal})"
            )

    def took(self, name: str, ticket: Ticket) -> None:
        """A request for ``name`` holds a slot on ``ticket.replica``."""
        # before the replica has said, where the model is is unknown (None): its first
        # request is neither a warm one nor a measured wake
        level = self.books.claim((ticket.replica.id, name))
        self._members[name].in_flight += 1
        self._tickets[id(ticket)] = (name, self.clock.monotonic(), level)

    def released(self, ticket: Ticket, *, answered: bool = True) -> None:
        """The request for ``ticket`` is over; ``answered``: the replica answered it (2xx-3xx),
        so its time counts as a warm request's or measures a wake."""
        claim = self._tickets.pop(id(ticket), None)
        if claim is None:
            return
        name, started, level = claim
        now = self.clock.monotonic()
        member = self._members[name]
        member.in_flight -= 1
        woke = self.books.unclaim((ticket.replica.id, name))
        if not answered:
            if woke is None and level is not None and level is not Level.HOT:  # not woken
                self.books.levels.setdefault(ticket.replica.id, {})[name] = level
            return
        member.last_end = now
        took = now - started
        if level is None:
            return
        if level is Level.HOT and woke is None:
            member.warm_s.append(took)
            return
        wake_s: float | None
        if woke is not None:  # the replica's own measure of the wake, and from where
            level, wake_s = woke
        else:
            wake_s = max(0.0, took - statistics.median(member.warm_s)) if member.warm_s else None
        if wake_s is not None:
            before = member.wakes.get(level)
            member.wakes[level] = wake_s if before is None else 0.7 * before + 0.3 * wake_s
            member.planned_at = -1  # plan again with what was measured
        self.events.emit(
            Wake(
                model=name,
                group=self.name,
                replica=ticket.replica.id,
                level=level,
                wake_s=wake_s,
            )
        )

    def in_flight(self, name: str) -> int:
        return self._members[name].in_flight

    def arrived(self, name: str) -> None:
        self._members[name].history.arrived(self.clock.time())

    def learn(self, name: str, arrivals: list[float]) -> None:
        self._members[name].history.learn(arrivals)

    # ------------------------------------------------------------------ the policy
    def wake_costs(self, name: str) -> WakeCosts:
        """The wake time per level the policy plans with: measured, else the group's given."""
        measured = self._members[name].wakes
        return WakeCosts(
            host=measured.get("host", self._wake_defaults.host),
            disk=measured.get("disk", self._wake_defaults.disk),
            zero=self._wake_defaults.zero,
        )

    def plan(self, name: str) -> TierPlan:
        member = self._members[name]
        count = member.history.observed
        if member.plan is None or member.planned_at != count:
            policy = Tiered(
                wake=self.wake_costs(name),
                host_hold_s=self.spec.host_hold_s,
                disk_hold_s=self.spec.disk_hold_s,
                levels=self._levels(name),
            )
            member.plan, member.planned_at = policy.decide(member.history), count
        return member.plan

    def zero_after_s(self) -> tuple[float, str]:
        """Seconds after the group's last request ended that its replicas may go: when every
        member's plan has reached zero, counted as its sleeps are, from the end of its own last
        request (not its arrival: a request that waited for a cold start or streamed long ends
        after others that came later). A member never asked, or with a request in flight,
        counts from the group's last end."""
        ends = [m.last_end for m in self._members.values() if m.last_end is not None]
        last = max(ends, default=0.0)
        keep = 0.0
        for name, member in self._members.items():
            end = last if member.in_flight or member.last_end is None else member.last_end
            keep = max(keep, end - last + self.plan(name).zero_at_s)
        return keep, f"every model's tiered plan at zero after {keep:.0f}s"

    def describe(self, name: str) -> dict[str, Any]:
        # the ready replicas heard from: where the model is on each
        levels = {str(r.id): self.level(r, name) for r in self._heard_from()}
        described: dict[str, Any] = {"group": self.name, "levels": levels}
        failed = {str(rid): f[name] for rid, f in self.books.failed.items() if name in f}
        if failed:
            described["unavailable_on"] = failed  # replica -> why it cannot serve there
        if self._tiered:
            plan = self.plan(name)
            described["plan"] = {
                "host_at_s": plan.host_at_s,
                "disk_at_s": plan.disk_at_s,
                "zero_at_s": plan.zero_at_s,
                "why": plan.why,
            }
            described["wake_s"] = {
                "host": self.wake_costs(name).host,
                "disk": self.wake_costs(name).disk,
            }
        return described


class GroupPolicy:
    """The group pool's keep-alive: ``fixed`` keeps the group's ``keep_alive_s``; ``tiered``
    keeps the replicas until every member's plan reaches zero."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.name = group.spec.policy

    def decide(self, history: History) -> Decision:
        if self.name != "tiered":
            keep = self.group.spec.pool.keep_alive_s
            return Decision(0.0, keep, f"fixed {keep:g}s")
        keep, why = self.group.zero_after_s()
        return Decision(0.0, keep, why)
