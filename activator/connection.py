"""One client connection of the front door: its requests parsed, dispatched, answered in order.

A :class:`FrontConnection` parses requests once with httptools, within bounds (see
:mod:`activator.frontdoor`: header and body limits, the read-ahead, the read timeouts, 100
Continue, a declined upgrade), and answers them in request order: a model request through the
data path (:mod:`activator.datapath`), taking a slot at once or waiting in the model's queue, then
relayed by the connection's :class:`~activator.relay.Relay`; anything else by the activator
(:meth:`activator.app.Activator.answer`: the parsed request in, the answer out, written here).
Each request is routed once (:meth:`~activator.frontdoor.FrontDoor.route`) and its guard checked
once, whichever answers it. A request refused before it could wait (no token, a bad
``Ember-Deadline-Ms``, a full queue), like one that cannot be parsed, is counted in the metrics,
not logged. An HTTP/1.0 client's connection is kept only when it asked, and then told so.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, cast

import httptools

from activator.datapath import CLIENT_GONE, Destination, Exchange, Route, deadline_of
from activator.errors import (
    ActivatorError,
    BadRequest,
    HeadersTooLarge,
    Overloaded,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
)
from activator.http import Headers, Request, Response, error_response, head
from activator.precheck import check_request
from activator.relay import Relay
from activator.routes import Target
from activator.upstream import UpstreamPool
from contracts.http11 import NO_WEBSOCKET, body_stalled, head_late

if TYPE_CHECKING:
    from activator.app import Activator


class Door(Protocol):
    """What a connection needs of the front door that accepted it
    (:class:`activator.frontdoor.FrontDoor`)."""

    activator: Activator
    buffered: int  # request body bytes held by all connections
    connections: set[FrontConnection]
    tasks: set[asyncio.Task[Any]]
    draining: bool
    upstreams: UpstreamPool

    def route(self, raw_url: bytes) -> Destination: ...
    def relayed(self, dest: Destination) -> Route | None: ...


MAX_HEADERS = 256  # header fields per request; past it: 431
# read-ahead on one connection while an earlier request is answered: past either, stop reading
PIPELINE_DEPTH = 8
PIPELINE_BYTES = 1024 * 1024


class FrontConnection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order."""

    def __init__(self, door: Door) -> None:
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
            message = NO_WEBSOCKET
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
                late = head_late(settings.header_timeout_s)
            elif self._in_body and now - self._last_body > settings.body_timeout_s:
                late = body_stalled(settings.body_timeout_s)
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
        """Route once, guard once; then relay it, or have the activator answer it."""
        dest = self.door.route(request.url)
        try:
            self.activator.check_guard(dest.target.guard, request.headers)
        except ActivatorError as exc:  # refused: counted, not logged
            self.activator.metrics.refuse(self.activator.label(dest.target), exc)
            self._respond(request, error_response(exc))
            return
        route = self.door.relayed(dest)
        if route is None:
            self.spawn(self._answer(request, dest.target))
            return
        x = self.activator.datapath.exchange(route, request.arrival)
        try:
            request.deadline_s = deadline_of(request.headers)
            if request.deadline_s is None and x.take_now():
                self.relay.forward(x, request)
                return
            if (
                route.endpoint == "infer"
                and request.method == b"POST"
                and route.pool.state != "ready"
            ):
                # it would wait for a start: one its replica would refuse wakes nothing
                check_request(route.pool.spec, request.headers, request.body)
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
        self._respond(request, error_response(error))

    async def _answer(self, request: Request, target: Target) -> None:
        self._respond(request, await self.activator.answer(request, target))

    # ------------------------------------------------------------------ writing
    def _respond(self, request: Request, response: Response) -> None:
        """The activator's own answer to ``request`` (no body to a HEAD), then the next one."""
        close = self._write(
            response.status,
            response.headers,
            response.body,
            request.keep_alive,
            head_only=request.head,
            http10=request.http10,
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
