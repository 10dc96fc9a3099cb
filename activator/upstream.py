"""Kept-alive connections to replicas, one request at a time each, their bytes handed on raw.

An :class:`Upstream` feeds what the replica sends to the :class:`Downstream` that asked (the
request's :class:`~activator.relay.Relay`) as it comes, parsing only enough (httptools) to know
where the answer ends, its status, and whether the connection may carry another request. Its
reading is paused and resumed through its :class:`~activator.flow.FlowControl` (by its client's,
while that client takes nothing of the answer).
"""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from activator.flow import FlowControl

# A replica (uvicorn) closes a connection idle for 5 s; reusing one that old could race its close
# and fail a request that never reached it, so older ones are dropped instead.
UPSTREAM_IDLE_S = 4.0


@lru_cache(maxsize=1024)
def host_header(key: str) -> bytes:
    """The ``Host`` a request to the replica at ``key`` carries (Knative routes by it)."""
    return (urlsplit(key).netloc or "replica").encode("idna")


class Downstream(Protocol):
    def received(self, data: bytes) -> None:
        """Bytes of the replica's answer (its head, then its body), as they arrive."""

    def upstream_done(self, conn: Upstream, status: int) -> None:
        """The answer is complete."""

    def upstream_failed(self, conn: Upstream | None, reason: str, *, sent: bool) -> None:
        """The exchange broke; ``sent``: the request may have reached the replica."""


class Upstream(asyncio.Protocol):
    """One kept-alive connection to a replica, carrying one request at a time."""

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self.upstream_pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.front: Downstream | None = None
        self.closed = False
        self.status = 0
        self.reusable = True  # it may carry another request
        self.said_close = False  # the answer said "connection: close": the client's must end
        self.head = False  # the request in flight is a HEAD: its answer has no body
        self.flow = FlowControl()  # not reading while the client is not taking the answer
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.flow.transport = self.transport

    def send(self, front: Downstream, data: bytes, *, head: bool = False) -> None:
        assert self.transport is not None
        self.front = front
        self.status = 0
        self.said_close = False
        self.head = head
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        front = self.front
        if front is None:  # bytes nobody asked for: this connection is out of step
            self.close()
            return
        front.received(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.reusable = False
            self.front = None
            front.upstream_failed(self, "the replica sent a malformed response", sent=True)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.said_close = not self.parser.should_keep_alive()
        # a server error may leave the replica closing this connection without having said so
        # (uvicorn does, after an exception): the next request on it would be lost, so it is
        # not reused
        self.reusable = not self.said_close and self.status < 500
        if self.head:
            # the parser cannot know the request was a HEAD (it would wait for a body that
            # never comes): the answer ends here, and the connection, out of step, is not reused
            self.reusable = False
            self.on_message_complete()

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

    def abandon(self) -> None:
        """Stop telling the front about this connection's bytes, and close it."""
        self.front = None
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Idle kept-alive connections per replica URL; new ones opened on demand."""

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

    async def connect(self, key: str) -> Upstream:
        """A new connection to ``key`` (a replica's base URL); OSError if it cannot be made."""
        url = urlsplit(key)
        secure = url.scheme == "https"
        host = url.hostname or ""
        port = url.port or (443 if secure else 80)
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: Upstream(self, key), host, port, ssl=True if secure else None
        )
        return conn

    def give(self, conn: Upstream) -> None:
        if conn.closed or not conn.reusable:
            conn.close()
            return
        conn.flow.read(True)  # its answer may have ended in the bytes read before a pause
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
