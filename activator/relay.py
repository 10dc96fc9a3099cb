"""A client connection's relay: its request onto a replica, the replica's answer back as bytes.

A :class:`Relay` belongs to one :class:`~activator.frontdoor.FrontConnection` and carries its
requests to replicas one at a time (the connection answers in order). It rewrites a request
onto a kept-alive connection to the replica whose slot the request's
:class:`~activator.datapath.Exchange` holds (:mod:`activator.upstream`) and passes the replica's
answer to the client as it arrives: small answers in one write, big ones as they come, no
re-encoding, with a ``connection`` header put into the head when the client must be told
(``close`` when its connection ends after this answer, ``keep-alive`` for an HTTP/1.0 client
whose connection stays open). Then it settles the exchange: answered; broken once part of the
answer went out (the client's connection is cut); never reached (the request waits for a slot
again, on another replica); or held past ``request_timeout_s`` (504, or a cut answer).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from activator.datapath import CLIENT_GONE, Exchange
from activator.errors import ActivatorError, DeadlineExceeded
from activator.http import CLOSE, HOP_HEADERS, KEEP_ALIVE, Request, says_close
from activator.upstream import Upstream, UpstreamPool, host_header


class Door(Protocol):
    """What a relay needs of the front door: the kept-alive replica connections."""

    upstreams: UpstreamPool
    draining: bool


class Client(Protocol):
    """What a relay needs of its client connection
    (:class:`activator.connection.FrontConnection`)."""

    @property
    def door(self) -> Door: ...

    transport: asyncio.Transport | None
    closing: bool
    write_paused: bool

    def spawn(self, coro: Any) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def next_request(self) -> None: ...
    def refuse(
        self, x: Exchange, error: ActivatorError, request: Request, *, admitted: bool = True
    ) -> None: ...
    async def wait_for_slot(self, x: Exchange, request: Request) -> None: ...


RELAY_FLUSH_BYTES = 256 * 1024  # an answer up to this size leaves in one write


class Relay:
    """The request a connection has on a replica, and the answer on its way back."""

    def __init__(self, conn: Client) -> None:
        self.conn = conn
        self.x: Exchange | None = None  # the exchange being relayed (None: nothing in flight)
        self.request: Request | None = None
        self.upstream: Upstream | None = None
        self.sent_at = 0.0  # monotonic
        self._relayed = False  # part of the answer went out: the client can be told no other
        self._close_after = False
        # a "connection" header line still to be put into the answer's head, or None
        self._mark: bytes | None = None
        self._out: list[bytes] = []
        self._out_size = 0

    def forward(self, x: Exchange, request: Request) -> None:
        """Send ``request`` to the replica whose slot ``x`` holds; its answer is relayed."""
        conn = self.conn
        if conn.closing:  # the client left while its request waited
            x.finish(CLIENT_GONE)
            return
        key = x.url
        self.x, self.request = x, request
        self._relayed = False
        self._close_after = not request.keep_alive or conn.door.draining
        self._mark = CLOSE if self._close_after else KEEP_ALIVE if request.http10 else None
        self.sent_at = time.monotonic()
        out = [request.method, b" ", request.url, b" HTTP/1.1\r\nhost: ", host_header(key), b"\r\n"]
        for name, value in request.headers:
            if name not in HOP_HEADERS:
                out += [name, b": ", value, b"\r\n"]
        out += [b"content-length: ", str(len(request.body)).encode(), b"\r\n\r\n"]
        data = b"".join(out) + request.body
        upstream = conn.door.upstreams.take(key)
        if upstream is not None:
            self._attach(upstream)
            upstream.send(self, data, head=request.head)
        else:
            conn.spawn(self._connect_and_send(x, key, data, request.head))

    async def _connect_and_send(self, x: Exchange, key: str, data: bytes, head: bool) -> None:
        try:
            upstream = await self.conn.door.upstreams.connect(key)
        except OSError as exc:
            if self.x is x:
                self.upstream_failed(None, f"cannot connect: {exc}", sent=False)
            return
        if self.x is not x or self.conn.closing:  # timed out, or the client left, meanwhile
            upstream.close()
            return
        self._attach(upstream)
        upstream.send(self, data, head=head)

    def _attach(self, upstream: Upstream) -> None:
        self.upstream = upstream
        if self.conn.write_paused:  # the client is not reading: neither do we, from the replica
            upstream.pause()

    def overdue(self, now: float, timeout_s: float) -> bool:
        """Whether a replica has held the request longer than ``timeout_s``."""
        return self.x is not None and now - self.sent_at > timeout_s

    def pause(self) -> None:
        """The client is not taking the answer: stop reading it from the replica."""
        if self.upstream is not None:
            self.upstream.pause()

    def resume(self) -> None:
        if self.upstream is not None:
            self.upstream.resume()

    def client_gone(self) -> None:
        """The client left: a request a replica has gets no answer (it is recorded as 499)."""
        x, upstream = self.x, self.upstream
        self.x = self.upstream = self.request = None
        self._out.clear()
        if x is not None:
            if upstream is not None:
                upstream.abandon()
            x.finish(CLIENT_GONE)

    # ------------------------------------------------------------------ the replica's side
    def relay(self, data: bytes) -> None:
        """The replica's bytes, passed on; small answers in one write, big ones as they come."""
        self._out.append(data)
        self._out_size += len(data)
        if self._mark is not None:
            self._insert_mark(self._mark)
        if self._out_size >= RELAY_FLUSH_BYTES:
            self._flush()

    def _insert_mark(self, mark: bytes) -> None:
        """Put ``mark`` (a "connection" header line) into the answer's head, after its status
        line, once the head is whole; keep-alive is left out of an answer that says close (the
        connection ends after it all the same)."""
        data = b"".join(self._out)
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return  # the head is not whole yet
        self._mark = None
        if mark is KEEP_ALIVE and says_close(data[:end]):
            return
        line = data.find(b"\r\n")
        self._out[:] = [data[: line + 2], mark, data[line + 2 :]]
        self._out_size = len(data) + len(mark)

    def _flush(self) -> None:
        transport = self.conn.transport
        if self._out and transport is not None and not self.conn.closing:
            transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            self._relayed = True
        self._out.clear()
        self._out_size = 0

    def _discard(self) -> None:
        """Drop the part of a broken answer that has not gone out (the client gets an error)."""
        self._out.clear()
        self._out_size = 0

    def upstream_done(self, upstream: Upstream, status: int) -> None:
        self._flush()
        self.conn.door.upstreams.give(upstream)
        x, self.x, self.upstream = self.x, None, None
        if x is not None:
            x.finish(status)
        if upstream.said_close or self._close_after:  # the client saw the answer end it
            self.conn.close()
            return
        self.conn.next_request()

    def upstream_failed(self, upstream: Upstream | None, reason: str, *, sent: bool) -> None:
        x, request = self.x, self.request
        if x is None or request is None:
            return
        self.x, self.upstream = None, None
        if upstream is not None:
            upstream.abandon()
        if self._relayed:  # part of the answer went out: all the client can be told is this
            x.broke(reason)
            self._flush()
            x.finish(502)
            self.conn.close()
            return
        self._discard()  # what arrived of it (a head without its body) never reaches the client
        if not sent:  # it never reached the replica: wait for a slot again
            try:
                x.unreachable(reason)
            except ActivatorError as exc:
                self.conn.refuse(x, exc, request)
                return
            self.conn.spawn(self.conn.wait_for_slot(x, request))
            return
        self.conn.refuse(x, x.broke(reason), request)

    def timed_out(self, timeout_s: float) -> None:
        """The replica has held the request past ``timeout_s``: 504, or a cut answer."""
        x, request, upstream = self.x, self.request, self.upstream
        if x is None or request is None:
            return
        self.x, self.upstream = None, None
        if upstream is not None:
            upstream.abandon()
        if self._relayed:  # the answer is cut: what the client was not taking is dropped too
            self._flush()
            x.finish(504)
            self.conn.abort()
            return
        self._discard()
        error = DeadlineExceeded(
            f"model '{x.pool.name}': replica {x.replica_id} did not answer within {timeout_s:g}s"
        )
        self.conn.refuse(x, error, request)
