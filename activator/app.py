"""The activator: one pool per configured model, and the endpoints it answers itself.

Model requests (``/v2/models/{m}/...``) are carried by the front door's byte relay through the
data path (:mod:`activator.datapath`); :meth:`Activator.answer` answers everything else in the
route table (:mod:`activator.routes`): health, server metadata, the repository index and its
load/unload, a model's ``ready`` and metadata while no replica of it is ready (the metadata when
it is known: :mod:`activator.metadata`), ``/metrics`` and the admin API. It takes the request as
the front door parsed it (:class:`~activator.http.Request`), routed and past its guard, and
returns a :class:`~activator.http.Response`, which the front door writes; what it raises, the
front door renders. Every error is rendered by :func:`activator.http.error_response`, in the OIP
shape ``{"error": "..."}``.

:meth:`Activator.lifespan` is how the activator starts and stops (the front door serves inside
it): it starts the pools and the scaler's warm pool, and at the end stops every pool, the
scaler, the background tasks (a :class:`~activator.tasks.TaskSet` it owns) and the event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from activator import __version__, admin, openai
from activator.auth import Guards
from activator.datapath import DataPath
from activator.errors import (
    ActivatorError,
    BadRequest,
    DeadlineExceeded,
    ModelUnavailable,
    PayloadTooLarge,
    UnknownModel,
)
from activator.events import EventLog, Skipped, arrivals, iter_events
from activator.groups import Group
from activator.http import Request, Response, json_response
from activator.members import AnyPool, MemberPool
from activator.metadata import MetadataBook
from activator.metrics import ActivatorMetrics
from activator.policy import Policy
from activator.pool import ModelPool, SystemClock
from activator.pool.replicas import Replica
from activator.routes import Action, Endpoint, Match, Target
from activator.scalers.base import Scaler
from activator.states import PoolState
from activator.tasks import TaskSet
from activator.tiered import Level
from contracts.events import ActivatorStart, ActivatorStop
from contracts.oip import load_request, no_query, repository_index_request
from contracts.replica import SleepLevel
from contracts.stack import ModelSpec, StackConfig
from contracts.stats import ModelStats

log = logging.getLogger("ember.activator")

# the repository's requests, whose parameters are read from the body only (a query string: 400)
_BODY_ONLY = {
    Endpoint.REPOSITORY_INDEX: "repository index request",
    Endpoint.REPOSITORY_LOAD: "load request",
    Endpoint.REPOSITORY_UNLOAD: "unload request",
}

# a model's state in the repository index, by the activator's; at zero: ZERO (a request wakes
# it), or UNAVAILABLE when its last start failed
_REPLICA_STATE = {
    "zero": "ZERO",
    "starting": "LOADING",
    "ready": "READY",
    "unavailable": "UNAVAILABLE",  # a group's member that failed on every replica
}
ADMIN_BODY_BYTES = 1 << 20
Handler = Callable[["Activator", Match, bytes], Awaitable[Response]]


class Activator:
    """The activator's state: pools, scaler, data path, event log, metrics, background tasks."""

    def __init__(
        self,
        stack: StackConfig,
        scaler: Scaler,
        *,
        host: str = "127.0.0.1",
        access_log: bool = False,
    ) -> None:
        self.stack = stack
        self.settings = s = stack.settings
        self.scaler = scaler
        # the activator's one HTTP client of its replicas (the scaler's, closed with it here)
        self.replica_client = scaler.replica_client
        self.metrics = ActivatorMetrics()
        self.events = EventLog(s.events, max_bytes=s.event_log_max_bytes, keep=s.event_log_keep)
        self.run_id = secrets.token_hex(8)  # this run's, in its activator_start/stop events
        self.tasks = TaskSet()
        self.datapath = DataPath(self.metrics, self.events, access_log=access_log)
        self.metadata = MetadataBook(stack.models, self.tasks, self.replica_client.metadata)
        # a model's pool, or its face over its group's pool (the group runs the replicas)
        self.pools: dict[str, AnyPool] = {}
        self.groups: dict[str, Group] = {}
        for name, spec in stack.models.items():
            if spec.group is None:
                # its replicas, once ready, teach the activator its metadata
                self.pools[name] = self._pool(spec, functools.partial(self._replica_ready, name))
                continue
            group = self.groups.get(spec.group)
            if group is None:
                group = self.groups[spec.group] = Group(
                    stack.groups[spec.group],
                    stack.models,
                    # its replicas are not asked for their members' metadata: on a replica
                    # that loads them on demand, the question would load every one of them
                    self._pool,
                    self.events,
                    client=self.replica_client,
                    statuses=self.scaler.statuses,
                    tasks=self.tasks,
                    clock=SystemClock(),
                )
            self.pools[name] = MemberPool(group, name, spec)
        self.metrics.watch(lambda: self.pools)
        self.guards = Guards(s, host)  # who may call what: the front door checks each request
        self.closing = False

    def _pool(
        self, spec: ModelSpec, on_ready: Callable[[Replica], None], policy: Policy | None = None
    ) -> ModelPool:
        """A pool of ``spec``'s replicas (a model's own, or a group's with the group's policy)."""
        return ModelPool(
            spec,
            self.scaler,
            self.events,
            self.metrics,
            grace_period_s=self.settings.grace_period_s,
            tasks=self.tasks,
            on_ready=on_ready,
            policy=policy,
        )

    # ------------------------------------------------------------------ lifetime
    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """The activator running: pools started on entry; everything stopped on exit."""
        self._learn_from_log()
        # marks a run: a next run's start with no stop between says this one crashed (the
        # cost report closes what it left open at its last event)
        self.events.emit(ActivatorStart(model="", run=self.run_id, pid=os.getpid()))
        for name, spec in self.stack.models.items():
            if not self.metadata.knows(name) and spec.group is not None:
                log.info(
                    "model %s: its config does not give all of its metadata (handler %s), so "
                    "GET /v2/models/%s wakes its group while the group is at zero",
                    name,
                    spec.handler or "unnamed",
                    name,
                )
            elif not self.metadata.knows(name):
                log.info(
                    "model %s: its config does not give all of its metadata (handler %s), so "
                    "GET /v2/models/%s wakes it until one of its replicas has been ready",
                    name,
                    spec.handler or "unnamed",
                    name,
                )
        for pool in self.pools.values():
            pool.start()
        for group in self.groups.values():
            group.start()
        fill = getattr(self.scaler, "fill_pool", None)
        if fill is not None:  # the local scaler's warm pool
            self.metrics.watch_warm_pool(self.scaler.pool_status)  # type: ignore[attr-defined]
            fill()
        try:
            yield
        finally:
            self.refuse_waiters()
            await asyncio.gather(
                *(p.aclose() for p in self.pools.values()),
                *(g.aclose() for g in self.groups.values()),
                return_exceptions=True,
            )
            await self.scaler.aclose()
            await self.tasks.aclose()
            await self.replica_client.aclose()
            self.events.emit(ActivatorStop(model="", run=self.run_id))
            self.events.close()

    def _learn_from_log(self) -> None:
        """Seed each model's keep-alive policy with the arrivals the event log remembers.

        One pass over the log (its rotated files too, oldest first), a line at a time, holding
        a bounded window of arrivals per model; lines that are not well-typed events are skipped
        and counted (a warning, and ``ember_activator_event_log_skipped_lines``).
        """
        path = self.settings.events
        if path is None:
            return
        skipped = Skipped()
        learned: dict[str, int] = {}
        for name, times in arrivals(iter_events(path, skipped), self.pools):
            self.pools[name].learn(times)
            learned[name] = learned.get(name, 0) + len(times)
        if learned:
            log.info("policies learned from %s: %s", path, learned)
        if skipped.lines:
            self.metrics.event_log_skipped.inc(skipped.lines)
            log.warning(
                "event log %s: skipped %d line(s) that are not well-typed events (a torn line "
                "after a crash, or an edited log)",
                path,
                skipped.lines,
            )

    def _replica_ready(self, name: str, replica: Replica) -> None:
        self.metadata.replica_ready(name, replica.url)

    def refuse_waiters(self) -> None:
        """Take no more requests; answer the queued ones 503 (the grace period is over)."""
        self.closing = True
        for pool in self.pools.values():
            pool.refuse_waiters()

    # ------------------------------------------------------------------ its own answers
    async def answer(self, request: Request, target: Target) -> Response:
        """The answer to a request for an endpoint of the activator's own, whose path means
        ``target`` (:func:`activator.routes.target`), past its guard (the front door checks it,
        and renders what this raises: :meth:`activator.frontdoor.FrontDoor.dispatch`)."""
        match = target.resolve(request.method.decode("latin-1"))
        if match.endpoint in _BODY_ONLY:  # read as the predictor reads them
            if match.model and self.group_named(match.model) is None:
                self.pool(match.model)  # 404 first, as the predictor answers it
            try:
                query = request.url.partition(b"?")[2].partition(b"#")[0]
                no_query(query, _BODY_ONLY[match.endpoint])
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        limit = ADMIN_BODY_BYTES if target.parts[0] == "admin" else self.settings.max_request_bytes
        if len(request.body) > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        return await _HANDLERS[match.endpoint](self, match, request.body)

    def group_named(self, name: str) -> Group | None:
        """The group ``name`` names, where no model has that name."""
        return self.groups.get(name) if name not in self.pools else None

    def pool(self, name: str) -> AnyPool:
        pool = self.pools.get(name)
        if pool is None:
            raise UnknownModel(f"model '{name}' is not in the repository")  # the predictor's words
        return pool

    # ------------------------------------------------------------------ the endpoints
    async def _health(self, match: Match, body: bytes) -> Response:
        key = "live" if match.endpoint is Endpoint.LIVE else "ready"
        return json_response(503 if self.closing else 200, {key: not self.closing})

    async def _server_metadata(self, match: Match, body: bytes) -> Response:
        return json_response(
            200,
            {"name": "ember-activator", "version": __version__, "extensions": ["model_repository"]},
        )

    async def _index(self, match: Match, body: bytes) -> Response:
        try:
            ready = repository_index_request(body).ready
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return json_response(200, self.index(ready=ready))

    def index(self, *, ready: bool = False) -> list[dict[str, Any]]:
        """Every model, or (``ready``) those whose ``ready`` answers 200: a model at zero is
        (a request wakes it) unless its last start failed, as the predictor counts a sleeping
        model ready."""
        index = []
        for name, pool in self.pools.items():
            if ready and pool.start_failed and pool.state is not PoolState.READY:
                continue
            entry = {
                "name": name,
                "state": _index_state(pool),
                "reason": pool.reason if pool.state is not PoolState.READY else "",
                "activator_state": pool.state,
            }
            level = pool.group.asleep(name) if isinstance(pool, MemberPool) else None
            if pool.state is PoolState.READY and level is not None:
                # asleep on its group's replicas, as they say it: SLEEPING, as the predictor's
                # index says it (a request wakes it there)
                entry.update(state="SLEEPING", reason=f"level {level}", level=level)
            index.append(entry)
        return index

    async def _repository_load(self, match: Match, body: bytes) -> Response:
        """A replica started (kept for the keep-alive) and ready; a group's member is then
        loaded on every replica of the group: woken, or its failed load tried again."""
        pool = self.pool(match.model)
        try:
            load_request(body)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        pool.warm(pool.spec.keep_alive_s, source="repository-load")
        replicas = pool.group.pool if isinstance(pool, MemberPool) else pool
        deadline = time.monotonic() + pool.spec.startup_timeout_s
        while replicas.state is not PoolState.READY:
            if time.monotonic() > deadline or (
                replicas.state is PoolState.ZERO and replicas.start_failed
            ):
                raise DeadlineExceeded(f"model '{match.model}' did not load: {replicas.reason}")
            await asyncio.sleep(0.02)
        if isinstance(pool, MemberPool):
            left_s = max(1.0, deadline - time.monotonic())
            refusals = await pool.group.load_member(pool.name, left_s)
            if refusals:
                raise ModelUnavailable(
                    f"model '{match.model}' did not load on every replica: "
                    + "; ".join(map(str, refusals))
                )
        return json_response(200, {"name": match.model, "loaded": True})  # as the predictor

    async def _repository_unload(self, match: Match, body: bytes) -> Response:
        """No level: the model goes to zero (a group's member: to sleep at disk, since its
        replicas serve the others). A level (``host``, ``disk``): a group's member sleeps at it on
        every replica, answered once they have; a model of its own has no level but zero."""
        level = admin.parse_unload_level(body)
        group = self.group_named(match.model)
        if group is not None:  # a group: to zero, all of it
            if level is not None:
                raise BadRequest(
                    f"'{match.model}' is a group: unloading it takes its replicas to zero; a "
                    "level is for one of its models"
                )
            group.pool.sleep("a repository unload request")
            return json_response(200, {"name": match.model, "unloaded": True})
        pool = self.pool(match.model)
        if isinstance(pool, MemberPool):
            source = "a repository unload request"
            refusals = await pool.group.sleep_member(
                pool.name, Level(level or SleepLevel.DISK), f"put to sleep by {source}"
            )
            if refusals:
                raise ModelUnavailable(
                    f"model '{match.model}' did not sleep on every replica: "
                    + "; ".join(map(str, refusals))
                )
        elif level is not None:
            raise BadRequest(
                f"model '{match.model}' has replicas of its own: it sleeps at zero (unload "
                "without a level); levels are for the models of a group"
            )
        else:
            pool.sleep("a repository unload request")
        # the predictor's answer: the level, when the model sleeps at one
        answer: dict[str, Any] = {"name": match.model, "unloaded": True}
        if isinstance(pool, MemberPool):
            answer["level"] = level or SleepLevel.DISK
        return json_response(200, answer)

    async def _model(self, match: Match, body: bytes) -> Response:
        """A model's ``ready`` or metadata while no replica answers it, without waking it.

        Ready: yes, unless its last start failed (at zero a model takes requests: they wake it).
        Metadata: what :class:`MetadataBook` knows. A version the model does not have: 404 for
        any request. Any other model request reaching here is a front-door bug: model requests
        are relayed through the data path.
        """
        pool = self.pool(match.model)
        if match.version and match.version != pool.spec.version:
            # any request for it (an infer too): no replica has it, so none is woken
            raise UnknownModel(
                f"model '{match.model}' version '{match.version}' is not in the repository"
            )
        metadata = self.metadata.get(match.model)
        if match.action not in (Action.READY, Action.METADATA) or (
            match.action is Action.METADATA and metadata is None
        ):
            raise ActivatorError(f"model '{match.model}': requests are relayed by the front door")
        state = [(b"ember-model-state", pool.state.encode())]
        if metadata is not None and match.action is Action.METADATA:
            return json_response(200, metadata.as_json(), state)
        failed = pool.start_failed and pool.state is not PoolState.READY
        return json_response(
            503 if failed else 200, {"name": match.model, "ready": not failed}, state
        )

    async def _model_stats(self, match: Match, body: bytes) -> Response:
        return json_response(200, {"model_stats": [self._stats(self.pool(match.model)).as_dict()]})

    async def _models_stats(self, match: Match, body: bytes) -> Response:
        stats = [self._stats(pool).as_dict() for pool in self.pools.values()]
        return json_response(200, {"model_stats": stats})

    def _stats(self, pool: AnyPool) -> ModelStats:
        """A model's statistics as the activator sees them (see :class:`DataPath`), kept since
        it started, so they survive the model's scaling to zero."""
        return self.datapath.stats.get(pool.name) or ModelStats(pool.name, pool.spec.version)

    async def _openai_models(self, match: Match, body: bytes) -> Response:
        return json_response(200, openai.models_list(p.spec for p in self.pools.values()))

    async def _metrics(self, match: Match, body: bytes) -> Response:
        text = generate_latest(self.metrics.registry)
        return Response(200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], text)

    async def _admin_models(self, match: Match, body: bytes) -> Response:
        return json_response(200, [p.describe() for p in self.pools.values()])

    async def _admin_warm(self, match: Match, body: bytes) -> Response:
        pool = self.pool(match.model)
        order = admin.parse_warm(body)
        pool.warm(order.seconds, source=order.source, replicas=order.replicas)
        return json_response(200, pool.describe())

    async def _admin_sleep(self, match: Match, body: bytes) -> Response:
        group = self.group_named(match.model)
        if group is not None:  # a group: its replicas go
            group.pool.sleep("the admin API")
            return json_response(200, group.pool.describe())
        pool = self.pool(match.model)
        pool.sleep()
        return json_response(200, pool.describe())


# what answers each endpoint of the activator's own (the route table's names them)
_HANDLERS: dict[Endpoint, Handler] = {
    Endpoint.LIVE: Activator._health,
    Endpoint.READY: Activator._health,
    Endpoint.SERVER_METADATA: Activator._server_metadata,
    Endpoint.REPOSITORY_INDEX: Activator._index,
    Endpoint.REPOSITORY_LOAD: Activator._repository_load,
    Endpoint.REPOSITORY_UNLOAD: Activator._repository_unload,
    Endpoint.MODELS_STATS: Activator._models_stats,
    Endpoint.MODEL_STATS: Activator._model_stats,
    Endpoint.MODEL: Activator._model,
    Endpoint.METRICS: Activator._metrics,
    Endpoint.OPENAI_MODELS: Activator._openai_models,
    Endpoint.ADMIN_MODELS: Activator._admin_models,
    Endpoint.ADMIN_WARM: Activator._admin_warm,
    Endpoint.ADMIN_SLEEP: Activator._admin_sleep,
}


def _index_state(pool: AnyPool) -> str:
    if pool.state is PoolState.ZERO and pool.start_failed:
        return "UNAVAILABLE"
    return _REPLICA_STATE.get(pool.state, "UNLOADING")
