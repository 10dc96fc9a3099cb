"""The activator's HTTP/1.1 server: parse requests, relay model requests, answer the rest.

A request is parsed once with httptools, on its connection (:mod:`activator.connection`), and
handed to :meth:`FrontDoor.dispatch`, which routes it once (:meth:`FrontDoor.route`, by path: a
query string is the replica's business; kept per path) and checks its guard once
(:mod:`activator.auth`), whichever answers it.

A model request (see :mod:`activator.routes`) becomes a :class:`~activator.relay.Relay`, one
object for its whole exchange: it goes through the data path (:mod:`activator.datapath`), taking
a replica slot at once if one is free (the warm path: no task, no await) or after waiting in the
model's queue, is rewritten onto a kept-alive connection to the replica
(:mod:`activator.upstream`), and the replica's answer is passed to the client byte for byte as it
arrives: no framework, no header objects, no re-encoding. That keeps the activator's cost small
next to the replica's (see ``scripts/bench_activator.py``). It is timed out ``request_timeout_s``
after it was sent (:mod:`activator.deadlines`: one loop timer for all). A request refused before
it could wait (no token, a bad ``Ember-Deadline-Ms``, a full queue), like one that cannot be
parsed, is counted in the metrics, not logged.

Every other request (health, metadata, the repository index, statistics, metrics, the admin
API, a model's ``ready`` and its metadata while no replica of it is ready) is answered by
:meth:`activator.app.Activator.answer`: the parsed request in, a response out, written by the
connection. Answers leave in request order on each connection. :class:`FrontDoor` (this module)
accepts the connections, dispatches their requests, looks for read timeouts and drains on
SIGTERM.

Memory stays bounded: a body declared over ``max_request_bytes`` is refused (413) before it is
read, and one that would take the bodies held over all connections past ``max_buffered_bytes``
is refused (503) (:mod:`activator.bounds`); a connection reads no further ahead than
``PIPELINE_DEPTH`` requests or ``PIPELINE_BYTES``, and stops reading (and stops reading its
replica's answer) while its client does not take what it is sent (:mod:`activator.flow`).
Bodies are let go with their answers, or with their connection. Reads are timed
(``header_timeout_s``, ``body_timeout_s``, ``idle_timeout_s``; 408 when part of a request came).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from activator import routes
from activator.app import Activator
from activator.connection import FrontConnection
from activator.datapath import Destination, Route
from activator.deadlines import Deadlines
from activator.errors import ActivatorError, UnknownModel
from activator.http import Request, error_response
from activator.openai import read_body, serves
from activator.relay import Relay
from activator.routes import Action, Endpoint, Target
from activator.states import PoolState
from activator.upstream import UpstreamPool

log = logging.getLogger("ember.activator")

# On SIGTERM: how long the loop keeps taking connections the kernel has already completed, and
# how long a connection accepted before the shutdown has to deliver its first request.
ACCEPT_SETTLE_S = 0.05
FIRST_REQUEST_S = 1.0
ANSWER_AFTER_GRACE_S = 2.0  # for the answers to queued requests refused when the grace ends
SWEEP_S = 1.0  # how often read timeouts are looked for (at most; less with shorter timeouts)
ROUTE_KEY_BYTES = 1024  # longer paths are routed each time, never kept


class FrontDoor:
    """Accepts connections for an :class:`Activator` until asked to drain."""

    def __init__(self, activator: Activator, *, request_timeout_s: float | None = None) -> None:
        self.activator = activator
        self.request_timeout_s = request_timeout_s or activator.settings.request_timeout_s
        self.upstreams = UpstreamPool()
        self.deadlines = Deadlines(self.request_timeout_s)  # the relayed requests'
        self.buffered = 0  # request body bytes held by all connections (max_buffered_bytes)
        self.connections: set[FrontConnection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()  # the connections' own, ended by drain
        self.draining = False
        self.server: asyncio.AbstractServer | None = None
        self._routes: dict[bytes, Destination] = {}

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` for a connection (an answer of the activator's own, a wait for a slot, a
        connect): the drain ends what is left of them."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def dispatch(self, conn: FrontConnection, request: Request) -> None:
        """Route ``request`` once and check its guard once; then relay it (``conn`` holds its
        :class:`Relay` until it ends) or have the activator answer it."""
        dest = self.route(request.url)
        activator = self.activator
        try:
            activator.guards.check(dest.target.guard, request.headers)
            tell = False  # a stream without its usage: the replica is asked for its tokens
            route: Route | None
            if dest.by_body:
                route, tell = self.body_route(dest, request)
            else:
                route = self.relayed(dest)
        except ActivatorError as exc:  # refused: counted, not logged
            activator.metrics.refuse(dest.label, exc)
            conn.respond(request, error_response(exc, openai=dest.target.openai))
            return
        if route is None:
            self.spawn(self._answer(conn, request, dest))
            return
        # held before it starts: it may end (and the next request begin) before start returns
        conn.exchange = relay = Relay(
            conn, request, activator.datapath.exchange(route, request.arrival), ask_usage=tell
        )
        relay.start()

    async def _answer(self, conn: FrontConnection, request: Request, dest: Destination) -> None:
        """The activator's own answer, or its error in the OIP shape."""
        try:
            response = await self.activator.answer(request, dest.target)
        except ActivatorError as exc:
            if exc.status_code < 500:  # refused here, before any replica: counted
                self.activator.metrics.refuse(dest.label, exc)
            # else a command that failed (a load, a sleep a replica refused): answered, and
            # no request a client could retry differently
            response = error_response(exc, openai=dest.target.openai)
        except Exception as exc:  # a bug of ours: say so, in the protocol's shape
            method = request.method.decode("latin-1")
            log.exception("unexpected error on %s %s", method, dest.target.path)
            response = error_response(
                ActivatorError(f"activator error: {type(exc).__name__}: {exc}"),
                openai=dest.target.openai,
            )
        conn.respond(request, response)

    def route(self, raw_url: bytes) -> Destination:
        """Where a request for this URL goes, worked out once per path (the query is the
        replica's business, never a key)."""
        path = raw_url.partition(b"?")[0]
        dest = self._routes.get(path)
        if dest is None:
            target = routes.target(path)
            model = target.model.model if target.model is not None else ""
            label = model if model in self.activator.pools else ""
            dest = Destination(target, self._model_route(target), label)
            if len(path) <= ROUTE_KEY_BYTES:  # the same few paths, over and over
                if len(self._routes) >= 4096:
                    self._routes.clear()
                self._routes[path] = dest
        return dest

    def body_route(self, dest: Destination, request: Request) -> tuple[Route, bool]:
        """The route of an OpenAI-compatible request: to the model its body names (read once,
        from the body held whole), and whether to ask its replica for a stream's tokens;
        BadRequest, or UnknownModel for a model not configured."""
        match = dest.target.model
        assert match is not None and dest.target.openai
        if request.method != b"POST":  # the table's answer: 405
            dest.target.resolve(request.method.decode("latin-1"))
        name, tell = read_body(request.body)
        pool = self.activator.pools.get(name)
        if pool is None:
            raise UnknownModel(f"The model `{name}` does not exist.")
        serves(pool.spec, match.action)  # BadRequest, before anything is woken
        # only Ember's own server answers the activator's ask for a stream's tokens
        return Route(pool, match.action, ""), tell and pool.spec.engine == "ember"

    def relayed(self, dest: Destination) -> Route | None:
        """The route of a request for ``dest``, relayed to its model's replicas now, or None
        (the activator answers it)."""
        route = dest.route
        if route is None:
            return None
        if route.endpoint.work or route.pool.state is PoolState.READY:
            return route
        # no replica answers: a model's ready, and its metadata when known, are the activator's
        # to say, so that neither wakes it
        known = route.endpoint is Action.METADATA and self.activator.metadata.knows(route.pool.name)
        if route.endpoint is Action.READY or known:
            return None
        return route

    def _model_route(self, target: Target) -> Route | None:
        """A configured model's route; None for any other path, and for a version the model
        does not have (the activator answers 404 for it: no replica is woken, nothing logged)."""
        match = target.model
        if match is None or match.endpoint is not Endpoint.MODEL:
            return None
        pool = self.activator.pools.get(match.model)
        if pool is None or (match.version and match.version != pool.spec.version):
            return None
        return Route(pool, match.action, match.version)

    async def serve(self, sock: Any, stop: asyncio.Event) -> None:
        """Run the activator and serve on ``sock`` until ``stop`` is set; then drain."""
        async with self.activator.lifespan():
            loop = asyncio.get_running_loop()
            self.server = await loop.create_server(lambda: FrontConnection(self), sock=sock)
            self.activator.tasks.spawn(self._sweep(), name="read-timeouts")
            try:
                await stop.wait()
            finally:
                await self.drain(self.activator.settings.grace_period_s)
        for conn in list(self.connections):
            conn.close()

    async def _sweep(self) -> None:
        """408 (or a close) for connections whose clients stopped sending. (A request a replica
        holds past ``request_timeout_s`` is its relay's to time out: :attr:`deadlines`.)"""
        settings = self.activator.settings
        period = min(SWEEP_S, settings.header_timeout_s / 4, settings.body_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_reads(now)

    async def drain(self, grace_s: float) -> None:
        """Stop accepting; answer what is held (queued requests included); then stop all.

        A connection the loop has accepted but whose first request has not fully arrived yet is
        held too (for up to FIRST_REQUEST_S): its client sent the request before it could know
        of the shutdown, and closing it would lose that request unanswered.
        """
        self.draining = True
        await asyncio.sleep(ACCEPT_SETTLE_S)  # take the connections and bytes already here
        if self.server is not None:
            self.server.close()
        start = time.monotonic()
        deadline, fresh_until = start + grace_s, start + min(grace_s, FIRST_REQUEST_S)
        while (now := time.monotonic()) < deadline:
            if not any(c.held(now, fresh_until) for c in list(self.connections)):
                break
            await asyncio.sleep(0.02)
        # the grace period is over: what still waits for a replica is answered 503 (in the OIP
        # shape) rather than dropped; what a replica is already working on gets a moment more
        self.activator.refuse_waiters()
        answered_by = time.monotonic() + ANSWER_AFTER_GRACE_S
        while time.monotonic() < answered_by and any(c.busy for c in list(self.connections)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.deadlines.close()
        self.upstreams.close()


def run(activator: Activator, sock: Any, install_signals: Callable[[asyncio.Event], None]) -> None:
    """Serve on ``sock`` until the event ``install_signals`` wires up is set."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.run

    async def main() -> None:
        stop = asyncio.Event()
        install_signals(stop)
        await FrontDoor(activator).serve(sock, stop)

    with contextlib.suppress(KeyboardInterrupt):
        runner(main())
