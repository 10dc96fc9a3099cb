"""The activator's HTTP/1.1 server: parse requests, relay model requests, pass the rest on.

A request is parsed once with httptools. A model request (see :mod:`activator.routes`) goes
through the data path (:mod:`activator.datapath`): it takes a replica slot, at once if one is
free (the warm path: no task, no await) or after waiting in the model's queue, and the
connection's :class:`~activator.relay.Relay` rewrites it onto a kept-alive connection to the
replica (:mod:`activator.upstream`) and passes the replica's answer to the client byte for byte
as it arrives: no framework, no header objects, no re-encoding. That keeps the activator's cost
small next to the replica's (see ``scripts/bench_activator.py``). A request refused before it
could wait (no token, a bad ``Ember-Deadline-Ms``, a full queue), like one that cannot be
parsed, is counted in the metrics, not logged.

Every other request (health, metadata, the repository index, statistics, metrics, the admin
API, a model's ``ready`` and its metadata while no replica of it is ready) goes to
:class:`activator.app.Activator` through a minimal ASGI bridge (:mod:`activator.bridge`).
Answers leave in request order on each connection.

Memory stays bounded: a body declared over ``max_request_bytes`` is refused (413) before it is
read, and one that would take the bodies held over all connections past ``max_buffered_bytes``
is refused (503); a connection reads no further ahead than ``PIPELINE_DEPTH`` requests or
``PIPELINE_BYTES``, and stops reading (and stops reading its replica's answer) while its client
does not take what it is sent. Bodies are let go with their answers, or with their connection.
Reads are timed (``header_timeout_s``, ``body_timeout_s``, ``idle_timeout_s``; 408 when part of
a request came).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

import httptools

from activator import bridge
from activator.app import Activator
from activator.datapath import CLIENT_GONE, ENDPOINTS, Exchange, Route, deadline_of
from activator.errors import (
    ActivatorError,
    BadRequest,
    HeadersTooLarge,
    Overloaded,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
)
from activator.http import Headers, error_response, head
from activator.relay import Relay
from activator.routes import Endpoint, Guard, resolve
from activator.upstream import UpstreamPool

log = logging.getLogger("ember.activator")

# On SIGTERM: how long the loop keeps taking connections the kernel has already completed, and
# how long a connection accepted before the shutdown has to deliver its first request.
ACCEPT_SETTLE_S = 0.05
MAX_HEADERS = 256  # header fields per request; past it: 431
FIRST_REQUEST_S = 1.0
ANSWER_AFTER_GRACE_S = 2.0  # for the answers to queued requests refused when the grace ends
SWEEP_S = 1.0  # how often timeouts are looked for (at most; less with shorter timeouts)
# read-ahead on one connection while an earlier request is answered: past either, stop reading
PIPELINE_DEPTH = 8
PIPELINE_BYTES = 1024 * 1024
ROUTE_KEY_BYTES = 1024  # longer paths are routed each time, never kept


@dataclass
class Request:
    method: bytes
    url: bytes
    headers: Headers
    body: bytes
    keep_alive: bool
    http10: bool  # an HTTP/1.0 request: kept alive only when it asked, and told so
    arrival: float  # wall clock
    deadline_s: float | None = None  # Ember-Deadline-Ms, once read

    @property
    def head(self) -> bool:
        return self.method == b"HEAD"


class FrontConnection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.activator = door.activator
        self.settings = door.activator.settings
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[Request] = deque()
        self.busy = False
        self.closing = False
        self.requests = 0  # requests parsed so far
        self.in_message = False  # a request's bytes have begun to arrive
        self.gone = asyncio.get_running_loop().create_future()
        # the request being parsed
        self._url = b""
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0
        self.relay = Relay(self)  # the request on a replica, its answer on its way back
        self._failed: ActivatorError | None = None  # a parse error, answered once its turn
        self._upgrading: Request | None = None  # a request that asked to switch protocols
        self._body_left = 0  # the bytes of its body still to come
        # memory: the body bytes this connection holds (counted in door.buffered too), the
        # request being answered, the bodies of those read ahead; reading paused or not
        self.holding = 0
        self._current: Request | None = None
        self._pending_bytes = 0
        self._reading = True
        self.write_paused = False  # the client is not taking what it is sent
        # read timeouts (monotonic): since when idle, the head's first byte, the last body bytes
        self._idle_since = time.monotonic()
        self._began = 0.0
        self._last_body = 0.0
        self._in_body = False
        self._continue = False  # the request being parsed expects 100 Continue

    # ------------------------------------------------------------------ parsing
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.door.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self._upgrading is not None:  # the body of a request that asked to upgrade
            data = self._take_body(data)
            if not data:
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._declined_upgrade(data, exc)
        except httptools.HttpParserError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, ActivatorError):  # raised in a callback, wrapped by the parser
                self._fail(cause)
                return
            self._fail(BadRequest(f"malformed HTTP request: {exc}"))

    def on_message_begin(self) -> None:
        self.in_message = True
        self._in_body = False
        self._continue = False
        self._began = time.monotonic()
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0
        self._head_size = 0

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.settings.max_header_bytes:
            raise HeadersTooLarge(
                f"request line and headers over {self.settings.max_header_bytes} bytes"
            )

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._continue = True  # answered once the head is whole and the body has room
        self._headers.append((name, value))
        self._count_head(len(name) + len(value) + 4)
        if len(self._headers) > MAX_HEADERS:
            raise HeadersTooLarge(f"more than {MAX_HEADERS} header fields")

    def on_headers_complete(self) -> None:
        """A body declared too big, or one there is no room for, is refused before it is read;
        then a client that waits for 100 Continue (curl past 1 MiB) gets it, unless answers to
        earlier requests are still due (it sends its body after its own wait)."""
        self._in_body = True
        self._last_body = time.monotonic()
        for name, value in self._headers:
            if name == b"content-length":
                self._room_for(int(value))  # the parser checked it is a number
        due = self.busy or self.pending
        if self._continue and not due and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _room_for(self, size: int) -> None:
        limit = self.settings.max_request_bytes
        if self._size + size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        budget = self.settings.max_buffered_bytes
        if self.door.buffered + size > budget:
            raise Overloaded(
                f"the activator holds {self.door.buffered} bytes of request bodies and may hold "
                f"{budget}: try again shortly"
            )

    def on_body(self, body: bytes) -> None:
        size = len(body)
        self._room_for(size)
        self._last_body = time.monotonic()
        self._size += size
        self._hold(size)
        self._body.append(body)

    def _hold(self, size: int) -> None:
        self.holding += size
        self.door.buffered += size

    def _let_go(self, size: int) -> None:
        size = min(size, self.holding)
        self.holding -= size
        self.door.buffered -= size

    def on_message_complete(self) -> None:
        self.in_message = False
        self.requests += 1
        request = Request(
            self.parser.get_method(),
            self._url,
            self._headers,
            b"".join(self._body),
            self.parser.should_keep_alive(),
            self.parser.get_http_version() == "1.0",
            time.time(),
        )
        self._body, self._size = [], 0  # the body's bytes are the request's now (held still)
        if self.parser.should_upgrade():  # its body, if any, follows: see _declined_upgrade
            self._upgrading = request
            return
        self._queue_request(request)

    def _queue_request(self, request: Request) -> None:
        self.pending.append(request)
        self._pending_bytes += len(request.body)
        if not self.busy:
            self.next_request()
        else:
            self._update_reading()

    def _update_reading(self) -> None:
        """Read on only while there is room: not too far ahead of the answers, the client
        taking what it is sent, no refusal waiting for its turn."""
        ahead = len(self.pending) >= PIPELINE_DEPTH or self._pending_bytes >= PIPELINE_BYTES
        reading = not (ahead or self.write_paused or self._failed is not None)
        if reading != self._reading and self.transport is not None and not self.closing:
            self._reading = reading
            if reading:
                # the pause was ours, not the client's: its head and body timers start again
                self._last_body = self._began = time.monotonic()
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def pause_writing(self) -> None:
        """The client is not taking its answers: stop reading them from the replica, and stop
        reading its further requests, until it does."""
        self.write_paused = True
        self.relay.pause()
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.relay.resume()
        self._update_reading()

    def _declined_upgrade(self, data: bytes, exc: httptools.HttpParserUpgrade) -> None:
        """A request asking to switch protocols (h2c) is answered over HTTP/1.1, as a proxy that
        speaks no other protocol does; a websocket handshake and a CONNECT are refused (400).

        The parser stops at the end of such a request's head, taking what follows for the new
        protocol: its body (``content-length`` bytes) is read here, then a fresh parser goes on.
        """
        request, self._upgrading = self._upgrading, None
        if request is None or request.method == b"CONNECT":
            self._fail(BadRequest("CONNECT and protocol upgrades are not supported"))
            return
        if (b"upgrade", b"websocket") in [(k, v.lower()) for k, v in request.headers]:
            # refused, as the predictor refuses it: a websocket client would take a plain answer
            # for a broken handshake, where it should learn the server speaks none
            message = "this server speaks no websocket; use the v2 REST routes over HTTP/1.1"
            self._fail(BadRequest(message))
            return
        length = 0
        for name, value in request.headers:
            if name == b"transfer-encoding":
                self._fail(BadRequest("an upgrade request's body must have a length"))
                return
            if name == b"content-length":
                length = int(value)  # the parser checked it is a number
        try:
            self._room_for(length)
        except ActivatorError as refused:
            self._fail(refused)
            return
        self.parser = httptools.HttpRequestParser(self)
        self._upgrading, self._body_left = request, length
        self._body, self._size = [], 0  # held as it arrives, like any other body
        self._last_body = time.monotonic()
        offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
        rest = self._take_body(data[offset:])
        if rest:
            self.data_received(rest)

    def _take_body(self, data: bytes) -> bytes:
        """Take the upgrading request's body from ``data``; what is left (the next request)."""
        request = self._upgrading
        assert request is not None
        taken = data[: self._body_left]
        try:
            self._room_for(len(taken))
        except ActivatorError as refused:
            self._upgrading = None
            self._fail(refused)
            return b""
        self._size += len(taken)
        self._hold(len(taken))
        self._last_body = time.monotonic()
        self._body.append(taken)
        self._body_left -= len(taken)
        if self._body_left:
            return b""
        self._upgrading = None
        request.body = b"".join(self._body)
        self._body, self._size = [], 0  # the request's now (held still)
        self._queue_request(request)
        return data[len(taken) :]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.door.connections.discard(self)
        if not self.gone.done():
            self.gone.set_result(None)
        self.relay.client_gone()  # a request a replica has: nobody to answer
        # let go of every body now: the parser and this object refer to each other, so without
        # this they would stay until a full garbage collection
        self._let_go(self.holding)
        self.pending.clear()
        self._body = []
        self._current = self._upgrading = None

    def _fail(self, error: ActivatorError) -> None:
        """A request that cannot be parsed: answered (after the answers already due), then the
        connection closes; a refusal (counted, not logged). What arrived of its body is let go
        at once."""
        self._let_go(self._size)
        self._size = 0
        self._body = []
        self.in_message = False
        if self.busy or self.pending:
            self._failed = error
            self._update_reading()
            return
        self.activator.metrics.refuse("", error)
        response = error_response(error)
        self._write(error.status_code, response.headers, response.body, keep_alive=False)
        self.close()

    # ------------------------------------------------------------------ dispatch
    def next_request(self) -> None:
        """The answer is out: take the next request (or wait for one)."""
        if self._current is not None:  # answered: its body goes
            self._let_go(len(self._current.body))
            self._current = self.relay.request = None
        if self.pending and not self.closing:
            self.busy = True
            request = self._current = self.pending.popleft()
            self._pending_bytes -= len(request.body)
            if not self._reading:
                self._update_reading()
            self._dispatch(request)
            return
        self.busy = False
        self._idle_since = time.monotonic()
        if self._failed is not None:
            error, self._failed = self._failed, None
            self._fail(error)
            return
        if self.door.draining and self.requests:  # its last answer said "connection: close"
            self.close()

    def check_reads(self, now: float) -> None:
        """Close a connection whose client stopped sending: 408 if part of a request came."""
        if self.closing or self._failed is not None:
            return
        settings = self.settings
        if self.write_paused:
            # it takes nothing of what it is sent: with nothing more in hand, it is let go (its
            # unsent answer with it) once idle for idle_timeout_s
            if (
                not self.busy
                and not self.pending
                and now - self._idle_since > settings.idle_timeout_s
            ):
                self.abort()
            return
        if not self._reading:
            return  # not reading is our doing: the client cannot be blamed
        if self.in_message or self._upgrading is not None:
            if not self._in_body and now - self._began > settings.header_timeout_s:
                late = f"the request's head did not arrive within {settings.header_timeout_s:g}s"
            elif self._in_body and now - self._last_body > settings.body_timeout_s:
                late = f"the request's body paused for over {settings.body_timeout_s:g}s"
            else:
                return
            self._fail(RequestTimeout(late))
        elif not self.busy and not self.pending:
            # a fresh connection owes its first request within header_timeout_s
            limit = settings.idle_timeout_s if self.requests else settings.header_timeout_s
            if now - self._idle_since > limit:
                self.close()

    def held(self, now: float, fresh_until: float) -> bool:
        """Whether draining must wait for this connection: a request in hand or arriving."""
        if self.closing:
            return False
        if self.busy or self.pending or self.in_message:
            return True
        return self.requests == 0 and now < fresh_until  # accepted; its first request is on its way

    def _dispatch(self, request: Request) -> None:
        route = self.door.relayed(request.url)
        if route is None:
            self.spawn(self._answer(request))
            return
        x = self.activator.datapath.exchange(route, request.arrival)
        try:
            self.activator.check_guard(Guard.API, request.headers)
            request.deadline_s = deadline_of(request.headers)
            if request.deadline_s is None and x.take_now():
                self.relay.forward(x, request)
                return
        except ActivatorError as exc:  # refused before it could wait: counted, not logged
            self.refuse(x, exc, request, admitted=False)
            return
        self.spawn(self.wait_for_slot(x, request))

    async def wait_for_slot(self, x: Exchange, request: Request) -> None:
        """Wait in the model's queue for a slot (waking the model), then forward."""
        try:
            if not await x.wait(request.deadline_s, asyncio.shield(self.gone)):
                x.finish(CLIENT_GONE)
                self.close()
                return
        except QueueFull as exc:  # no room to wait: a refusal
            self.refuse(x, exc, request, admitted=False)
            return
        except ActivatorError as exc:  # it waited (a deadline, a failed start): a request
            self.refuse(x, exc, request)
            return
        self.relay.forward(x, request)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.door.tasks.add(task)
        task.add_done_callback(self.door.tasks.discard)

    def refuse(
        self, x: Exchange, error: ActivatorError, request: Request, *, admitted: bool = True
    ) -> None:
        """Answer ``request`` with ``error``; record it (``admitted``: it reached the queue or a
        replica), or count it as a refusal."""
        if admitted:
            x.fail(error)
        else:
            x.refuse(error)
        response = error_response(error)
        self._respond(request, error.status_code, response.headers, response.body)

    # ------------------------------------------------------------------ the activator's own
    async def _answer(self, request: Request) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        answer = await bridge.answer(
            self.activator,
            request.method,
            request.url,
            request.headers,
            request.body,
            peer,
            self.gone,
        )
        self._respond(request, *answer)

    # ------------------------------------------------------------------ writing
    def _respond(self, request: Request, status: int, headers: Headers, body: bytes) -> None:
        """The activator's own answer to ``request`` (no body to a HEAD), then the next one."""
        close = self._write(
            status, headers, body, request.keep_alive, head_only=request.head, http10=request.http10
        )
        if close:
            self.close()
            return
        self.next_request()

    def _write(
        self,
        status: int,
        headers: Headers,
        body: bytes,
        keep_alive: bool,
        *,
        head_only: bool = False,
        http10: bool = False,
    ) -> bool:
        """Write an answer; whether it said ``connection: close`` (the caller then closes). An
        HTTP/1.0 client's connection kept open is told so (``connection: keep-alive``)."""
        close = not keep_alive or self.door.draining
        if self.transport is None or self.closing:
            return close
        data = head(status, headers, len(body), close=close, keep_alive=http10 and not close)
        self.transport.write(data if head_only else data + body)
        return close

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close without waiting for what the client has not taken of its answers."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


class FrontDoor:
    """Accepts connections for an :class:`Activator` until asked to drain."""

    def __init__(self, activator: Activator, *, request_timeout_s: float | None = None) -> None:
        self.activator = activator
        self.request_timeout_s = request_timeout_s or activator.settings.request_timeout_s
        self.upstreams = UpstreamPool()
        self.buffered = 0  # request body bytes held by all connections (max_buffered_bytes)
        self.connections: set[FrontConnection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()  # the connections' own, ended by drain
        self.draining = False
        self.server: asyncio.AbstractServer | None = None
        self._routes: dict[bytes, Route | None] = {}

    def relayed(self, raw_url: bytes) -> Route | None:
        """The route of a request for this URL, relayed to its model's replicas, or None (the
        activator answers it)."""
        path = raw_url.partition(b"?")[0]  # the query is the replica's business, never a key
        if path in self._routes:
            route = self._routes[path]
        else:
            route = self._route(raw_url)
            if len(path) <= ROUTE_KEY_BYTES:  # the same few paths, over and over
                if len(self._routes) >= 4096:
                    self._routes.clear()
                self._routes[path] = route
        if route is None:
            return None
        if route.endpoint == "infer" or route.pool.state == "ready":
            return route
        # no replica answers: a model's ready, and its metadata when known, are the activator's
        # to say, so that neither wakes it
        known = route.endpoint == "metadata" and self.activator.metadata.knows(route.pool.name)
        if route.endpoint == "ready" or known:
            return None
        return route

    def _route(self, raw_url: bytes) -> Route | None:
        """A configured model's route; None for any other path, and for a version the model
        does not have (the activator answers 404 for it: no replica is woken, nothing logged)."""
        try:
            path = unquote(httptools.parse_url(raw_url).path.decode("latin-1"))
            match = resolve("", path)
        except (ActivatorError, httptools.HttpParserInvalidURLError):
            return None
        pool = self.activator.pools.get(match.model)
        if match.endpoint is not Endpoint.MODEL or pool is None:
            return None
        if match.version and match.version != pool.spec.version:
            return None
        return Route(pool, ENDPOINTS[match.action], match.version)

    async def serve(self, sock: Any, stop: asyncio.Event) -> None:
        """Run the activator and serve on ``sock`` until ``stop`` is set; then drain."""
        async with self.activator.lifespan():
            loop = asyncio.get_running_loop()
            self.server = await loop.create_server(lambda: FrontConnection(self), sock=sock)
            self.activator.tasks.spawn(self._sweep(), name="request-timeouts")
            try:
                await stop.wait()
            finally:
                await self.drain(self.activator.settings.grace_period_s)
        for conn in list(self.connections):
            conn.close()

    async def _sweep(self) -> None:
        """504 for requests a replica has held past ``request_timeout_s``; 408 (or a close)
        for connections whose clients stopped sending."""
        settings = self.activator.settings
        shortest = min(settings.header_timeout_s, settings.body_timeout_s, self.request_timeout_s)
        period = min(SWEEP_S, shortest / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.relay.overdue(now, self.request_timeout_s):
                    conn.relay.timed_out(self.request_timeout_s)
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
