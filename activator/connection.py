"""One client connection of the front door: its requests parsed and answered in order.

A :class:`FrontConnection` parses requests once with httptools, within bounds (header limits
here; body limits in :mod:`activator.bounds`; the read-ahead, the read timeouts, 100 Continue, a
declined upgrade: :mod:`activator.upgrade`), and hands them to the front door one at a time, in
request order (:meth:`~activator.frontdoor.FrontDoor.dispatch`): a model request becomes a
:class:`~activator.relay.Relay`, which the connection holds until the relay ends and asks for the
next request; anything else is answered by the activator and written here (:meth:`respond`). A
request that cannot be parsed is answered (after the answers already due) and the connection
closed; it is counted in the metrics, not logged. An HTTP/1.0 client's connection is kept only
when it asked, and then told so. Its reading and writing are a
:class:`~activator.flow.FlowControl`: reading pauses while it is too far ahead of its answers,
and while its client takes nothing of them (the replica being relayed is paused with it).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, cast

import httptools

from activator import upgrade
from activator.bounds import Bounds
from activator.deadlines import Deadlines
from activator.errors import ActivatorError, BadRequest, HeadersTooLarge, RequestTimeout
from activator.flow import FlowControl
from activator.http import Headers, Request, Response, error_response, head
from activator.relay import Relay
from activator.upstream import UpstreamPool
from contracts.http11 import body_stalled, head_late

if TYPE_CHECKING:
    from activator.app import Activator


class Door(Protocol):
    """What a connection needs of the front door that accepted it
    (:class:`activator.frontdoor.FrontDoor`)."""

    activator: Activator
    buffered: int  # request body bytes held by all connections
    connections: set[FrontConnection]
    draining: bool
    upstreams: UpstreamPool
    deadlines: Deadlines

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
    def dispatch(self, conn: FrontConnection, request: Request) -> None: ...


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
        self.flow = FlowControl()  # reading (paused while too far ahead), the client taking
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
        self.exchange: Relay | None = None  # the model request being relayed (the door's doing)
        self._failed: ActivatorError | None = None  # a parse error, answered once its turn
        self._upgrading: Request | None = None  # a request that asked to switch protocols
        self._body_left = 0  # the bytes of its body still to come
        # memory: the body bytes this connection holds (counted in door.buffered too), the
        # request being answered, the bodies of those read ahead
        self.bounds = Bounds(door, self.settings)
        self._current: Request | None = None
        self._pending_bytes = 0
        # read timeouts (monotonic): since when idle, the head's first byte, the last body bytes
        self._idle_since = time.monotonic()
        self._began = 0.0
        self._last_body = 0.0
        self._in_body = False
        self._continue = False  # the request being parsed expects 100 Continue

    # ------------------------------------------------------------------ parsing
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.flow.transport = self.transport
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
                self.bounds.room_for(self._size, int(value))  # the parser checked the number
        due = self.busy or self.pending
        if self._continue and not due and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        size = len(body)
        self.bounds.room_for(self._size, size)
        self._last_body = time.monotonic()
        self._size += size
        self.bounds.hold(size)
        self._body.append(body)

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
        reading = not (ahead or self.flow.write_paused or self._failed is not None)
        if not self.closing and self.flow.read(reading) and reading:
            # the pause was ours, not the client's: its head and body timers start again
            self._last_body = self._began = time.monotonic()

    def pause_writing(self) -> None:
        """The client is not taking its answers: stop reading them from the replica (the
        flow's follower), and stop reading its further requests, until it does."""
        self.flow.pause_writing()
        self._update_reading()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        self._update_reading()

    def _declined_upgrade(self, data: bytes, exc: httptools.HttpParserUpgrade) -> None:
        """A request asking to switch protocols (:mod:`activator.upgrade`): refused, or its
        body read here (past the parser), then a fresh parser goes on."""
        request, self._upgrading = self._upgrading, None
        try:
            length = upgrade.body_length(request)
            self.bounds.room_for(0, length)
        except ActivatorError as refused:
            self._fail(refused)
            return
        self.parser = httptools.HttpRequestParser(self)
        self._upgrading, self._body_left = request, length
        self._body, self._size = [], 0  # held as it arrives, like any other body
        self._last_body = time.monotonic()
        rest = self._take_body(data[upgrade.stopped_at(exc, data) :])
        if rest:
            self.data_received(rest)

    def _take_body(self, data: bytes) -> bytes:
        """Take the upgrading request's body from ``data``; what is left (the next request)."""
        request = self._upgrading
        assert request is not None
        taken = data[: self._body_left]
        try:
            self.bounds.room_for(self._size, len(taken))
        except ActivatorError as refused:
            self._upgrading = None
            self._fail(refused)
            return b""
        self._size += len(taken)
        self.bounds.hold(len(taken))
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
        exchange, self.exchange = self.exchange, None
        if exchange is not None:  # a request a replica has: nobody to answer
            exchange.client_gone()
        # let go of every body now: the parser and this object refer to each other, so without
        # this they would stay until a full garbage collection
        self.bounds.let_go(self.bounds.holding)
        self.pending.clear()
        self._body = []
        self._current = self._upgrading = None

    def _fail(self, error: ActivatorError) -> None:
        """A request that cannot be parsed: answered (after the answers already due), then the
        connection closes; a refusal (counted, not logged). What arrived of its body is let go
        at once."""
        self.bounds.let_go(self._size)
        self._size = 0
        self._body = []
        self.in_message = False
        if self.busy or self.pending:
            self._failed = error
            self._update_reading()
            return
        self.activator.metrics.refuse("", error)
        self._write(error_response(error), keep_alive=False)
        self.close()

    # ------------------------------------------------------------------ dispatch
    def next_request(self) -> None:
        """The answer is out: take the next request (or wait for one)."""
        if self._current is not None:  # answered: its body goes
            self.bounds.let_go(len(self._current.body))
            self._current = self.exchange = None
        if self.pending and not self.closing:
            self.busy = True
            request = self._current = self.pending.popleft()
            self._pending_bytes -= len(request.body)
            if not self.flow.reading:
                self._update_reading()
            self.door.dispatch(self, request)
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
        idle = not self.busy and not self.pending
        if self.flow.write_paused:
            # it takes nothing of what it is sent: with nothing more in hand, it is let go (its
            # unsent answer with it) once idle for idle_timeout_s
            if idle and now - self._idle_since > settings.idle_timeout_s:
                self.abort()
            return
        if not self.flow.reading:
            return  # not reading is our doing: the client cannot be blamed
        if self.in_message or self._upgrading is not None:
            if not self._in_body and now - self._began > settings.header_timeout_s:
                late = head_late(settings.header_timeout_s)
            elif self._in_body and now - self._last_body > settings.body_timeout_s:
                late = body_stalled(settings.body_timeout_s)
            else:
                return
            self._fail(RequestTimeout(late))
        elif idle:
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

    # ------------------------------------------------------------------ writing
    def respond(self, request: Request, response: Response) -> None:
        """An answer of the activator's own to ``request`` (no body to a HEAD), then the next
        request."""
        if self._write(response, request.keep_alive, head_only=request.head, http10=request.http10):
            self.close()
            return
        self.next_request()

    def _write(
        self, response: Response, keep_alive: bool, *, head_only: bool = False, http10: bool = False
    ) -> bool:
        """Write an answer; whether it said ``connection: close`` (the caller then closes). An
        HTTP/1.0 client's connection kept open is told so (``connection: keep-alive``)."""
        close = not keep_alive or self.door.draining
        if self.transport is None or self.closing:
            return close
        body = response.body
        data = head(
            response.status,
            response.headers,
            len(body),
            close=close,
            keep_alive=http10 and not close,
        )
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
