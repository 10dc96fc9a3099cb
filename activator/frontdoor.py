"""The activator's HTTP/1.1 server: a byte relay for warm requests, the ASGI app for the rest.

A warm request (a model route, a replica with a free slot, nobody queued) is parsed once with
httptools, rewritten onto a kept-alive connection to the replica, and the replica's answer is
relayed to the client byte for byte as it arrives: no framework, no header objects, no
re-encoding, a handful of syscalls. That is what keeps the activator's cost small next to the
replica's on a shared machine (see ``scripts/bench_activator.py``).

Everything else (health, metadata, the repository index, metrics, the admin API, and any
request that must wait in a queue or wake a model) goes to :class:`activator.app.Activator`
through a minimal ASGI bridge, in order, on the same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

import httptools

from activator.app import HOP_HEADERS, Activator, model_route
from activator.errors import HeadersTooLarge, PayloadTooLarge, ReplicaFailed
from activator.pool import ModelPool, Ticket

log = logging.getLogger("ember.activator")

RELAY_FLUSH_BYTES = 256 * 1024  # an answer up to this size leaves in one write
# On SIGTERM: how long the loop keeps taking connections the kernel has already completed, and
# how long a connection accepted before the shutdown has to deliver its first request.
ACCEPT_SETTLE_S = 0.05
MAX_HEADERS = 256  # header fields per request; past it: 431
FIRST_REQUEST_S = 1.0
ANSWER_AFTER_GRACE_S = 2.0  # for the answers to queued requests refused when the grace ends
# A replica (uvicorn) closes a connection idle for 5 s; reusing one that old could race its close
# and fail a request that never reached it, so older ones are dropped instead.
UPSTREAM_IDLE_S = 4.0
_REASONS = {
    200: b"OK",
    204: b"No Content",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    499: b"Client Closed Request",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


@dataclass
class Request:
    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    arrival: float  # wall clock


class Upstream(asyncio.Protocol):
    """One kept-alive connection to a replica, carrying one request at a time."""

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self.upstream_pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.front: FrontConnection | None = None
        self.closed = False
        self.status = 0
        self.reusable = True
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, front: FrontConnection, data: bytes) -> None:
        assert self.transport is not None
        self.front = front
        self.status = 0
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        front = self.front
        if front is None:  # bytes nobody asked for: this connection is out of step
            self.close()
            return
        front.relay(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.reusable = False
            self.front = None
            front.upstream_failed(self, "the replica sent a malformed response", sent=True)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.reusable = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        front, self.front = self.front, None
        if front is not None:
            front.upstream_done(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.upstream_pool.forget(self)
        front, self.front = self.front, None
        if front is not None:
            front.upstream_failed(self, f"the connection dropped ({exc or 'closed'})", sent=True)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Idle kept-alive connections per replica URL."""

    def __init__(self) -> None:
        self.idle: dict[str, list[Upstream]] = {}

    def take(self, key: str) -> Upstream | None:
        conns = self.idle.get(key)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > UPSTREAM_IDLE_S:
                conn.close()  # the replica may be closing it right now: never race that
                continue
            return conn
        return None

    def give(self, conn: Upstream) -> None:
        if conn.closed or not conn.reusable:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: Upstream) -> None:
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()


class FrontConnection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order."""

    def __init__(self, server: FrontDoor) -> None:
        self.server = server
        self.activator = server.activator
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
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0
        # the request being relayed on the fast path
        self._ticket: Ticket | None = None
        self._pool: ModelPool | None = None
        self._request: Request | None = None
        self._started = 0.0
        self._relayed = False
        self._out: list[bytes] = []
        self._out_size = 0

    # ------------------------------------------------------------------ parsing
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b'{"error": "protocol upgrades are not supported"}')
        except httptools.HttpParserError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, (PayloadTooLarge, HeadersTooLarge)):  # wrapped by the parser
                self._fail(cause.status_code, f'{{"error": {_json_str(str(cause))}}}'.encode())
                return
            message = _json_str(f"malformed HTTP request: {exc}")
            self._fail(400, f'{{"error": {message}}}'.encode())

    def on_message_begin(self) -> None:
        self.in_message = True
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0
        self._head_size = 0

    def _count_head(self, size: int) -> None:
        self._head_size += size
        limit = self.activator.settings.max_header_bytes
        if self._head_size > limit:
            raise HeadersTooLarge(f"request line and headers over {limit} bytes")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._count_head(len(name) + len(value) + 4)
        if len(self._headers) > MAX_HEADERS:
            raise HeadersTooLarge(f"more than {MAX_HEADERS} header fields")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.activator.settings.max_request_bytes:
            raise PayloadTooLarge(
                f"request body over {self.activator.settings.max_request_bytes} bytes"
            )
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
            time.time(),
        )
        self.pending.append(request)
        if not self.busy:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if not self.gone.done():
            self.gone.set_result(None)

    def _fail(self, status: int, body: bytes) -> None:
        self._write(status, body, [(b"content-type", b"application/json")], keep_alive=False)
        self._close()

    # ------------------------------------------------------------------ dispatch
    def _next(self) -> None:
        while self.pending and not self.closing:
            request = self.pending.popleft()
            self.busy = True
            if self._try_fast(request):
                return  # the relay calls _finish_fast, which comes back here
            task = asyncio.ensure_future(self._slow(request))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
            return
        self.busy = False
        if self.server.draining and self.requests:  # its last answer said "connection: close"
            self._close()

    def held(self, now: float, fresh_until: float) -> bool:
        """Whether draining must wait for this connection: a request in hand or arriving."""
        if self.closing:
            return False
        if self.busy or self.pending or self.in_message:
            return True
        return self.requests == 0 and now < fresh_until  # accepted; its first request is on its way

    def _try_fast(self, request: Request) -> bool:
        """Relay a warm model request straight to a free replica slot, if there is one."""
        if not request.keep_alive or self.server.draining:
            return False
        routes = self.server.routes
        if request.url in routes:
            pool = routes[request.url]
        else:
            pool = self.server.route(request.url)
            if len(routes) < 4096:  # the same few URLs, over and over
                routes[request.url] = pool
        if pool is None:
            return False
        for name, _ in request.headers:
            if name in (b"ember-deadline-ms", b"expect"):
                return False
        if not self.activator.authorized(request.headers):
            return False  # the ASGI app answers 401
        try:
            ticket = pool.try_acquire()
        except Exception:
            return False
        if ticket is None:
            return False
        self._ticket, self._pool, self._request = ticket, pool, request
        self._started = time.time()
        self._relayed = False
        head = [request.method, b" ", request.url, b" HTTP/1.1\r\nhost: replica\r\n"]
        for name, value in request.headers:
            if name not in HOP_HEADERS:
                head += [name, b": ", value, b"\r\n"]
        head += [b"content-length: ", str(len(request.body)).encode(), b"\r\n\r\n"]
        data = b"".join(head) + request.body
        key = ticket.replica.url
        conn = self.server.upstreams.take(key)
        if conn is not None:
            conn.send(self, data)
        else:
            task = asyncio.ensure_future(self._connect_and_send(key, data))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
        return True

    async def _connect_and_send(self, key: str, data: bytes) -> None:
        host, _, port = key.removeprefix("http://").rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: Upstream(self.server.upstreams, key), host, int(port)
            )
        except OSError as exc:
            self.upstream_failed(None, f"cannot connect: {exc}", sent=False)
            return
        conn.send(self, data)

    # ------------------------------------------------------------------ the relay's callbacks
    def relay(self, data: bytes) -> None:
        """The replica's bytes, passed on; small answers in one write, big ones as they come."""
        self._relayed = True
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= RELAY_FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._out and self.transport is not None and not self.closing:
            self.transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
        self._out.clear()
        self._out_size = 0

    def upstream_done(self, conn: Upstream, status: int) -> None:
        self._flush()
        self.server.upstreams.give(conn)
        self._finish_fast(status)
        if not conn.reusable:  # the replica said Connection: close, and the client saw it
            self._close()
            return
        self._next()

    def upstream_failed(self, conn: Upstream | None, reason: str, *, sent: bool) -> None:
        ticket, pool, request = self._ticket, self._pool, self._request
        if ticket is None or pool is None or request is None:
            return
        if conn is not None:
            conn.close()
        pool.suspect(ticket.replica)
        if self._relayed:  # part of the answer went out: all the client can be told is this
            self._flush()
            self._finish_fast(502)
            self._close()
            return
        if not sent:  # it never reached the replica: the slow path queues it again
            self._ticket = None
            pool.release(ticket)
            self.busy = True
            task = asyncio.ensure_future(self._slow(request))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
            return
        error = ReplicaFailed(
            f"model '{pool.name}': replica {ticket.replica.id} went away before it answered "
            f"({reason}); the request was not retried"
        )
        self._finish_fast(502)
        body = f'{{"error": {_json_str(str(error))}}}'.encode()
        self._write(502, body, [(b"content-type", b"application/json")], keep_alive=True)
        self._next()

    def _finish_fast(self, status: int) -> None:
        ticket, pool, request = self._ticket, self._pool, self._request
        self._ticket = self._pool = self._request = None
        if ticket is None or pool is None or request is None:
            return
        pool.release(ticket)
        self.activator.record(pool, request.url, request.arrival, self._started, status, ticket)

    # ------------------------------------------------------------------ the slow path
    async def _slow(self, request: Request) -> None:
        url = httptools.parse_url(request.url)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method.decode("latin-1"),
            "scheme": "http",
            "path": unquote(url.path.decode("latin-1")),
            "raw_path": url.path,
            "query_string": url.query or b"",
            "headers": request.headers,
            "client": self.transport.get_extra_info("peername") if self.transport else None,
            "server": None,
            "arrival": request.arrival,
        }
        sent_body = False

        async def receive() -> MutableMapping[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await asyncio.shield(self.gone)
            return {"type": "http.disconnect"}

        response: dict[str, Any] = {}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                headers = [(k, v) for k, v in response["headers"] if k.lower() != b"content-length"]
                self._write(
                    response["status"], message.get("body", b""), headers, request.keep_alive
                )

        try:
            await self.activator(scope, receive, send)
        except Exception:
            log.exception("unexpected error answering %s", request.url)
        if not request.keep_alive:
            self._close()
            return
        self._next()

    # ------------------------------------------------------------------ writing
    def _write(
        self, status: int, body: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        if self.transport is None or self.closing:
            return
        head = [b"HTTP/1.1 ", str(status).encode(), b" ", _REASONS.get(status, b"Unknown"), b"\r\n"]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
        if not keep_alive or self.server.draining:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head) + body)

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class FrontDoor:
    """Accepts connections for an :class:`Activator` until asked to drain."""

    def __init__(self, activator: Activator) -> None:
        self.activator = activator
        self.upstreams = UpstreamPool()
        self.connections: set[FrontConnection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.draining = False
        self.server: asyncio.AbstractServer | None = None
        self.routes: dict[bytes, ModelPool | None] = {}

    def route(self, raw_url: bytes) -> ModelPool | None:
        """The pool a URL's request may be relayed to, or None (the ASGI app answers it)."""
        path = unquote(httptools.parse_url(raw_url).path.decode("latin-1"))
        route = model_route(path.strip("/").split("/"))  # as the ASGI app parses it
        if route is None or route[1] == "ready":  # ready: answered by the activator itself
            return None
        return self.activator.pools.get(route[0])

    async def serve(self, sock: Any, stop: asyncio.Event) -> None:
        await self.activator.startup()
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: FrontConnection(self), sock=sock)
        try:
            await stop.wait()
        finally:
            await self.drain(self.activator.settings.grace_period_s)

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
                conn._close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.upstreams.close()
        await self.activator.shutdown()
        for conn in list(self.connections):
            conn._close()


def _json_str(text: str) -> str:
    import json

    return json.dumps(text)


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
