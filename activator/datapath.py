"""The data path: what happens to every request for a model, however it is carried.

An :class:`Exchange` is one request's passage: it takes a slot on a ready replica (now, or
waiting in the model's queue, giving its place up if the client leaves), is forwarded, may be
tried again on another replica if it never reached the first (at most ``UNREACHABLE_RETRIES``
times), gives its slot back, and is recorded once (metrics and the event log) with its status
and its :class:`Route` (model, version, endpoint: never the request's target or query). One
refused before it joined the queue (a bad ``Ember-Deadline-Ms``, a full queue, the activator
shutting down) is only counted (:meth:`Exchange.refuse`): a request that waited and then got
503 or 504 is recorded as any other.
The front door's byte relay carries the bytes; this module decides everything else, so there is
one place that knows how a request is proxied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from activator.errors import ActivatorError, BadRequest, ReplicaFailed
from activator.events import EventLog
from activator.metrics import ActivatorMetrics
from activator.pool import Replica, Ticket
from activator.routes import Action, Endpoint, Target
from activator.states import PoolState
from activator.usage import Usage
from contracts.stack import ModelSpec
from contracts.stats import ModelStats

log = logging.getLogger("ember.activator")

UNREACHABLE_RETRIES = 2  # a request that never reached a replica goes to another one
CLIENT_GONE = 499


class Pool(Protocol):
    """What the data path asks of a model's pool: a model's own
    (:class:`~activator.pool.ModelPool`) or a group member's face of its group's
    (:class:`~activator.members.MemberPool`)."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def state(self) -> PoolState: ...

    def try_acquire(self) -> Ticket | None:
        """A slot on a ready replica now, or None."""
        ...

    async def acquire(self, deadline_s: float | None = None) -> Ticket:
        """A slot, waiting in the model's queue (its deadline) for one."""
        ...

    def release(self, ticket: Ticket, *, answered: bool = True) -> None:
        """The slot back; ``answered``: the replica answered (2xx-3xx)."""
        ...

    def suspect(self, replica: Replica) -> None:
        """``replica`` failed a request: check it (no new requests meanwhile)."""
        ...


@dataclass(frozen=True, slots=True)
class Route:
    """What a model request is for: its model's pool, the endpoint (its route's action) and
    the version its path names ("" for none); all the event log records of its target."""

    pool: Pool
    endpoint: Action
    version: str


@dataclass(frozen=True, slots=True)
class Destination:
    """Where requests for one path go (the front door works it out once per path): what the
    path means (its guard, the route table's answer), for a configured model's route its
    :class:`Route` (None: the activator answers it), and the model a refusal is counted for
    ("" unless a configured one: a metric's label stays bounded)."""

    target: Target
    route: Route | None
    label: str

    @property
    def by_body(self) -> bool:
        """An OpenAI-compatible route: its model is named in the request's body."""
        return self.target.model is not None and self.target.model.endpoint is Endpoint.OPENAI


class DataPath:
    """The data path's shared state: where requests are recorded.

    ``stats`` are each model's statistics as the activator sees them, since it started (they
    outlive its replicas): requests counted once each (the activator does not look inside a
    request for its batch), ``queue`` the wait for a replica slot (a cold start's included),
    ``compute_infer`` the time replicas took to answer.
    """

    def __init__(
        self, metrics: ActivatorMetrics, events: EventLog, *, access_log: bool = False
    ) -> None:
        self.metrics = metrics
        self.events = events
        self.access_log = access_log
        self._counters: dict[tuple[str, int], Any] = {}  # the requests counter's children
        self._queue_hist: dict[str, Any] = {}
        self._itl_hist: dict[str, Any] = {}
        self.stats: dict[str, ModelStats] = {}

    def exchange(self, route: Route, arrival: float) -> Exchange:
        return Exchange(self, route, arrival)

    def inter_token(self, name: str, seconds: float) -> None:
        """A gap between two events of a streamed answer of model ``name``."""
        hist = self._itl_hist.get(name)
        if hist is None:
            hist = self._itl_hist[name] = self.metrics.inter_token.labels(name)
        hist.observe(seconds)

    def record(self, x: Exchange, status: int) -> None:
        """One request's metrics and event line."""
        name = x.pool.name
        if x.usage is not None:
            self.metrics.prompt_tokens.labels(name).inc(x.usage.prompt_tokens)
            self.metrics.generation_tokens.labels(name).inc(x.usage.completion_tokens)
        if x.ttft_s is not None:
            self.metrics.time_to_first_token.labels(name).observe(x.ttft_s)
        if self.access_log:
            log.info("%s %s %d (queued %.3fs)", name, x.route.endpoint.label, status, x.queued_s)
        counter = self._counters.get((name, status))
        if counter is None:
            counter = self._counters[(name, status)] = self.metrics.requests.labels(
                name, str(status)
            )
        counter.inc()
        hist = self._queue_hist.get(name)
        if hist is None:
            hist = self._queue_hist[name] = self.metrics.queue_seconds.labels(name)
        hist.observe(x.queued_s)
        now = time.time()
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = ModelStats(name, x.pool.spec.version)
        stats.record_request(ok=status < 400, items=1, total_ns=int((now - x.arrival) * 1e9))
        if x.started is not None:
            stats.execution_count += 1
            stats.queue.add(int(x.queued_s * 1e9))
            stats.compute_infer.add(int((now - x.started) * 1e9))
        self.events.request(
            name,
            endpoint=x.route.endpoint.label,
            version=x.route.version,
            arrival=x.arrival,
            start=x.started,
            end=now,
            status=status,
            cold=x.cold,
            queue_s=x.queued_s,
            replica=x.replica_id,
            tokens=x.usage,
            ttft_s=x.ttft_s,
        )


class Exchange:
    """One request's claim on a replica slot, its tries, and its record."""

    __slots__ = (
        "arrival",
        "cold",
        "datapath",
        "finished",
        "pool",
        "queued_s",
        "replica_id",
        "route",
        "started",
        "ticket",
        "tries",
        "ttft_s",
        "usage",
    )

    def __init__(self, datapath: DataPath, route: Route, arrival: float) -> None:
        self.datapath = datapath
        self.route = route
        self.pool = route.pool
        self.arrival = arrival  # wall clock
        self.ticket: Ticket | None = None
        self.tries = 0
        self.cold = False
        self.queued_s = 0.0
        self.started: float | None = None  # wall clock, when last handed to a replica
        self.replica_id: int | None = None
        self.finished = False
        self.usage: Usage | None = None  # the tokens its answer said it used (the relay reads)
        self.ttft_s: float | None = None  # a streamed answer's first event, after the hand-off

    @property
    def url(self) -> str:
        """The replica's base URL (``http://host:port``) for the slot held."""
        assert self.ticket is not None
        return self.ticket.replica.url

    @property
    def served_as(self) -> str | None:
        """The name the replica's server answers to, when not the model's (a command
        engine's): an OpenAI request's body is renamed to it."""
        assert self.ticket is not None
        handle = self.ticket.replica.handle
        return None if handle is None else handle.served_as

    def take_now(self) -> bool:
        """A slot now, if a ready replica has one and nobody is queued before us (ShuttingDown
        once the pool takes no more requests)."""
        ticket = self.pool.try_acquire()
        if ticket is None:
            return False
        self._claim(ticket)
        return True

    async def wait(self, deadline_s: float | None, gone: Awaitable[Any]) -> bool:
        """A slot, waiting in the queue (and waking the model) if need be.

        False if the client went away first (its place in the queue is given up); the queue's
        errors (full, deadline, failed start, shutting down) are raised.
        """
        if self.take_now():
            return True
        waiting = asyncio.ensure_future(self.pool.acquire(deadline_s))
        left = asyncio.ensure_future(gone)
        try:
            await asyncio.wait((waiting, left), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            waiting.cancel()
            left.cancel()
            raise
        left.cancel()
        if waiting.done():
            self._claim(waiting.result())
            return True
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        return False

    def _claim(self, ticket: Ticket) -> None:
        self.ticket = ticket
        self.tries += 1
        self.cold = self.cold or ticket.cold
        self.queued_s += ticket.queued_s
        self.replica_id = ticket.replica.id
        self.started = time.time()

    def unreachable(self, reason: str) -> None:
        """The request never reached the replica: mark it suspect and give the slot back.

        Another try is allowed (the caller waits for a slot again) unless the tries are spent:
        then :class:`ReplicaFailed` is raised.
        """
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            self.pool.suspect(ticket.replica)
            self.pool.release(ticket, answered=False)
        if self.tries > UNREACHABLE_RETRIES:
            raise ReplicaFailed(f"model '{self.pool.name}': no replica could be reached ({reason})")

    def broke(self, reason: str) -> ReplicaFailed:
        """The replica went away after the request reached it: it is not tried again."""
        ticket = self.ticket
        replica = ticket.replica.id if ticket is not None else "?"
        if ticket is not None:
            self.pool.suspect(ticket.replica)
        return ReplicaFailed(
            f"model '{self.pool.name}': replica {replica} went away before it answered "
            f"({reason}); the request was not retried"
        )

    def finish(self, status: int) -> None:
        """Give the slot back and record the request (once; later calls do nothing)."""
        if self.finished:
            return
        self.finished = True
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            self.pool.release(ticket, answered=status < 400)
        self.datapath.record(self, status)

    def fail(self, exc: ActivatorError) -> None:
        self.finish(exc.status_code)

    def refuse(self, exc: ActivatorError) -> None:
        """Refused before it joined the queue: counted in the metrics, not logged (once)."""
        if self.finished:
            return
        self.finished = True
        self.datapath.metrics.refuse(self.pool.name, exc)


def deadline_of(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The ``Ember-Deadline-Ms`` header in seconds, if given; BadRequest if it is not valid."""
    for key, value in headers:
        if key == b"ember-deadline-ms":
            try:
                ms = float(value)
            except ValueError:
                raise BadRequest(f"Ember-Deadline-Ms must be milliseconds, got {value!r}") from None
            if not 0 < ms <= 86_400_000:
                raise BadRequest("Ember-Deadline-Ms must be above 0 and at most a day")
            return ms / 1000
    return None
