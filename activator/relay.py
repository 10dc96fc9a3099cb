"""A relayed exchange: one model request onto a replica, and the replica's answer back as bytes.

A :class:`Relay` is made for each model request a client connection
(:class:`~activator.connection.FrontConnection`) hands over, and lives until the request is
answered, one way or another. It owns everything the request holds:

- its claim on a replica slot (a :class:`~activator.datapath.Exchange`: taken at once on the warm
  path, no task and no await; else waited for in the model's queue, waking the model);
- the kept-alive replica connection it is sent on (:mod:`activator.upstream`), whose reading
  follows the client's writing (:mod:`activator.flow`);
- the answer on its way back: passed on byte for byte as it arrives, small answers in one write,
  no re-encoding, with a ``connection`` header put into the head when the client must be told
  (``close`` when its connection ends after this answer, ``keep-alive`` for an HTTP/1.0 client
  whose connection stays open);
- its deadline, ``request_timeout_s`` after it was sent (:mod:`activator.deadlines`).

It has one way in (:meth:`Relay.start`) and one way out (:meth:`Relay._end`), whatever ends it:
answered (the replica connection goes back to the pool), the replica failed (502: an error
answer, or a cut connection once part of the answer went out), timed out (504, or a cut answer),
refused before or while it waited (the error is the answer), or the client gone (499). That one
place gives the upstream back or drops it, gives the slot back and records the request (once),
and tells the connection what comes next. A request that never reached its replica is not
ended: its slot goes back and it waits for another (:meth:`Exchange.unreachable`).

Streamed answers ride on the same seam: the replica's bytes reach :meth:`Relay.received` as
they come (its head, then its body, however it is framed). On the routes that generate (the
OpenAI-compatible ones and ``generate_stream``) an answer whose head says
``text/event-stream`` is streamed: each piece is written as it comes rather than gathered, the
gaps between pieces are timed (the inter-token latency), and its deadline is the silence
between pieces (``request_timeout_s`` to the first, then to each next), not its whole length.
On those routes the answer's ``usage`` (:mod:`activator.usage`) is read as it passes, into the
request's record. A stream whose replica dies after part of it went out is ended with an error
event (:mod:`activator.streamend`) where the client's body allows one, and recorded as a 502.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from activator.datapath import CLIENT_GONE, Exchange, deadline_of
from activator.deadlines import Deadlines
from activator.errors import ActivatorError, DeadlineExceeded, QueueFull
from activator.flow import FlowControl
from activator.http import (
    CLOSE,
    HOP_HEADERS,
    KEEP_ALIVE,
    Request,
    Response,
    error_response,
    says_close,
)
from activator.openai import renamed
from activator.precheck import check_request
from activator.routes import GENERATING, Action
from activator.states import PoolState
from activator.streamend import StreamCursor, error_ending
from activator.upstream import Upstream, UpstreamPool, host_header
from activator.usage import CommentDropper, UsageScanner
from contracts.http11 import SSE_DONE
from contracts.replica import USAGE_HEADER

RELAY_FLUSH_BYTES = 256 * 1024  # an answer up to this size leaves in one write


class Door(Protocol):
    """What a relay needs of the front door."""

    upstreams: UpstreamPool
    deadlines: Deadlines
    draining: bool

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


class Client(Protocol):
    """What a relay needs of its client connection
    (:class:`activator.connection.FrontConnection`)."""

    @property
    def door(self) -> Door: ...

    transport: asyncio.Transport | None
    flow: FlowControl
    closing: bool
    gone: asyncio.Future[None]

    def close(self) -> None: ...
    def abort(self) -> None: ...
    def next_request(self) -> None: ...
    def respond(self, request: Request, response: Response) -> None: ...


class Relay:
    """One model request relayed to a replica, and its answer on the way back."""

    __slots__ = (
        "_close_after",
        "_cursor",
        "_done",
        "_done_said",
        "_drop",
        "_ended_here",
        "_head",
        "_last",
        "_mark",
        "_out",
        "_relayed",
        "_scan",
        "_sent",
        "_stream",
        "_tail",
        "conn",
        "deadline",
        "ended",
        "request",
        "upstream",
        "waiting",
        "x",
    )

    def __init__(
        self, conn: Client, request: Request, x: Exchange, *, ask_usage: bool = False
    ) -> None:
        self.conn = conn
        self.request = request
        self.x = x  # its claim on a slot, its tries, its record
        self.upstream: Upstream | None = None
        self.deadline = 0.0  # monotonic, while a replica has it (set by Deadlines)
        self.waiting = False  # in the model's queue: the wait ends it if the client leaves
        self.ended = False
        self._done = False  # the whole answer came: its replica connection may be kept
        self._ended_here = False  # a stream whose replica died, ended whole by the activator
        self._relayed = False  # part of the answer went out: the client can be told no other
        self._close_after = False
        self._mark: bytes | None = None  # a "connection" header line still to put in the head
        self._out = b""  # the answer's bytes not written yet
        self._head = False  # the answer's head has come whole
        # on a route that generates: its usage, read as it passes; a streamed answer
        self._scan = UsageScanner() if x.route.endpoint in GENERATING else None
        self._stream = False
        self._done_said = False  # a stream's ``data: [DONE]`` went out to its client
        self._tail = b""  # the end of what went out, for a [DONE] written in two pieces
        self._cursor: StreamCursor | None = None  # a chunked stream: where its client stands
        # a stream whose client did not ask for its usage: the replica is asked (a comment at
        # its end), and the comment is taken out here
        self._drop = CommentDropper() if ask_usage else None
        self._sent = 0.0  # monotonic: when it was handed to the replica (a stream's first event)
        self._last = 0.0  # monotonic: a stream's last piece

    # ------------------------------------------------------------------ to a slot
    def start(self) -> None:
        """Take a slot at once (the warm path) and send the request, or wait for one."""
        x, request = self.x, self.request
        try:
            request.deadline_s = deadline_of(request.headers)
            if request.deadline_s is None and x.take_now():
                self._send()
                return
            if (
                x.route.endpoint is Action.INFER
                and request.method == b"POST"
                and x.pool.state is not PoolState.READY
            ):
                # it would wait for a start: one its replica would refuse wakes nothing
                check_request(x.pool.spec, request.headers, request.body)
        except ActivatorError as exc:  # refused before it could wait: counted, not logged
            self._end(exc.status_code, exc, admitted=False)
            return
        self._wait()

    def _wait(self) -> None:
        self.waiting = True
        self.conn.door.spawn(self._wait_for_slot())

    async def _wait_for_slot(self) -> None:
        """Wait in the model's queue for a slot (waking the model), then send."""
        try:
            got = await self.x.wait(self.request.deadline_s, asyncio.shield(self.conn.gone))
        except QueueFull as exc:  # no room to wait: a refusal
            self.waiting = False
            self._end(exc.status_code, exc, admitted=False)
            return
        except ActivatorError as exc:  # it waited (a deadline, a failed start): a request
            self.waiting = False
            self._end(exc.status_code, exc)
            return
        self.waiting = False
        if not got:  # the client left first
            self._end(CLIENT_GONE)
            return
        self._send()

    # ------------------------------------------------------------------ to the replica
    def _send(self) -> None:
        """Rewrite the request onto a kept-alive connection to the replica whose slot it holds."""
        conn, request = self.conn, self.request
        if conn.closing:  # the client left while its request waited
            self._end(CLIENT_GONE)
            return
        door = conn.door
        key = self.x.url
        self._close_after = not request.keep_alive or door.draining
        self._mark = CLOSE if self._close_after else KEEP_ALIVE if request.http10 else None
        door.deadlines.add(self)
        out = [request.method, b" ", request.url, b" HTTP/1.1\r\nhost: ", host_header(key), b"\r\n"]
        for name, value in request.headers:
            if name not in HOP_HEADERS:
                out += [name, b": ", value, b"\r\n"]
        if self._drop is not None:
            out += [USAGE_HEADER, b": comment\r\n"]
        body = request.body
        if self._scan is not None:  # a route that generates: timed, maybe renamed
            self._sent = time.monotonic()
            served_as = self.x.served_as if self.x.route.endpoint.openai else None
            if served_as is not None:
                body = renamed(body, served_as)
        out += [b"content-length: ", str(len(body)).encode(), b"\r\n\r\n"]
        data = b"".join(out) + body
        upstream = door.upstreams.take(key)
        if upstream is not None:
            self._attach(upstream, data)
        else:
            conn.door.spawn(self._connect_and_send(key, data))

    async def _connect_and_send(self, key: str, data: bytes) -> None:
        try:
            upstream = await self.conn.door.upstreams.connect(key)
        except OSError as exc:
            if not self.ended:
                self.upstream_failed(None, f"cannot connect: {exc}", sent=False)
            return
        if self.ended:  # timed out, or the client left, meanwhile
            upstream.close()
            return
        self._attach(upstream, data)

    def _attach(self, upstream: Upstream, data: bytes) -> None:
        self.upstream = upstream
        self.conn.flow.follow(upstream.flow)  # read from it only while the client takes
        upstream.send(self, data, head=self.request.head)

    def _detach(self) -> Upstream | None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            self.conn.flow.follow(None)
        return upstream

    # ------------------------------------------------------------------ the replica's side
    def received(self, data: bytes) -> None:
        """The replica's bytes as they come: gathered, and written once the answer is whole
        or past RELAY_FLUSH_BYTES (so a big answer goes on as it comes); a stream's, at once."""
        if self._scan is not None:
            self._scan.feed(data)
        if self._drop is not None and self._head:
            data = self._drop.feed(data)
        out = self._out + data if self._out else data  # the first piece: no copy
        if not self._head and (self._mark is not None or self._scan is not None):
            end = out.find(b"\r\n\r\n")
            if end < 0:
                self._out = out  # the head is not whole yet
                return
            self._head = True
            head = out[:end]
            if self._scan is not None and _says(head, b"content-type", b"text/event-stream"):
                self._stream = True
                if _says(head, b"transfer-encoding", b"chunked"):
                    self._cursor = StreamCursor()
                if len(out) > end + 4:
                    self._event()
            if self._drop is not None:
                if _says(head, b"transfer-encoding", b"chunked"):
                    out = out[: end + 4] + self._drop.feed(out[end + 4 :])
                else:  # not chunks: nothing to take out (and nothing asked of it was framed)
                    self._drop = None
            if self._mark is not None:
                out = self._insert_mark(out, end)
        elif self._stream:
            self._event()
        if self._stream or len(out) >= RELAY_FLUSH_BYTES:
            self._out = out
            self._flush()
        else:
            self._out = out

    def _event(self) -> None:
        """A streamed answer's piece came: its first event's time, or the gap since the last;
        its deadline is now ``request_timeout_s`` of silence from here."""
        now = time.monotonic()
        x = self.x
        if self._last:
            x.datapath.inter_token(x.pool.name, now - self._last)
        else:
            x.ttft_s = now - self._sent
        self._last = now
        deadlines = self.conn.door.deadlines
        deadlines.discard(self)
        deadlines.add(self)

    def _insert_mark(self, data: bytes, end: int) -> bytes:
        """Put the "connection" header line into the answer's head (whole, ending at ``end``),
        after its status line; keep-alive is left out of an answer that says close (the
        connection ends after it all the same)."""
        mark, self._mark = self._mark, None
        if mark is None or (mark is KEEP_ALIVE and says_close(data[:end])):
            return data
        line = data.find(b"\r\n") + 2
        return b"".join((data[:line], mark, data[line:]))

    def _flush(self) -> None:
        out, self._out = self._out, b""
        transport = self.conn.transport
        if out and transport is not None and not self.conn.closing:
            transport.write(out)
            self._relayed = True
            if self._stream and not self._done_said:
                seen = self._tail + out
                self._done_said = SSE_DONE in seen
                self._tail = seen[-len(SSE_DONE) :]
            if self._cursor is not None:
                self._cursor.feed(out)

    def upstream_done(self, upstream: Upstream, status: int) -> None:
        """The whole answer came."""
        self._done = True
        self._end(status)

    def upstream_failed(self, upstream: Upstream | None, reason: str, *, sent: bool) -> None:
        """The replica connection broke (``sent``: the request may have reached the replica)."""
        if self.ended:
            return
        x = self.x
        if self._relayed:  # part of the answer went out: its head can no longer say so
            x.broke(reason)
            if self._cursor is not None and self._cursor.between_events and not self._out:
                # a stream: its last event says so, and its body ends (else it is cut)
                self._out = error_ending(
                    502,
                    f"model '{x.pool.name}': replica {x.replica_id} went away mid-stream "
                    f"({reason}); the answer is cut short, not retried",
                )
                # its answer is whole: its connection is kept, as after any answer (closing
                # it now would race the client's next request on it, unwarned by its head)
                self._ended_here = True
            self._end(502)
            return
        if sent:
            error = x.broke(reason)
            self._end(error.status_code, error)
            return
        # it never reached the replica: its slot goes back, and it waits for another
        dropped = self._detach()
        if dropped is not None:
            dropped.abandon()
        self.conn.door.deadlines.discard(self)
        self._out = b""  # what arrived of an answer (a head without its body) is dropped
        self._head = self._stream = False
        self._last = 0.0
        self._cursor = None
        if self._scan is not None:
            self._scan = UsageScanner()
        if self._drop is not None:
            self._drop = CommentDropper()
        try:
            x.unreachable(reason)
        except ActivatorError as exc:  # its tries are spent
            self._end(exc.status_code, exc)
            return
        self._wait()

    def timed_out(self, timeout_s: float) -> None:
        """A replica has held the request past ``timeout_s``: 504, or a cut answer (what the
        client was not taking is dropped too)."""
        if self.ended:
            return
        if self._relayed:
            self._end(504, abort=True)
            return
        x = self.x
        error = DeadlineExceeded(
            f"model '{x.pool.name}': replica {x.replica_id} did not answer within {timeout_s:g}s"
        )
        self._end(504, error)

    def client_gone(self) -> None:
        """The client left: nobody to answer (recorded as 499). While it waits in the queue,
        the wait itself ends it (its place given up). A client that leaves a stream once its
        ``data: [DONE]`` has gone out had the whole answer (an OpenAI client closes on it, and
        a server may write the body's end apart): recorded with the answer's status."""
        if self.waiting:
            return
        upstream = self.upstream  # its connection parsed the answer's head, status and all
        if self._done_said and upstream is not None and upstream.status:
            self._end(upstream.status)
        else:
            self._end(CLIENT_GONE)

    # ------------------------------------------------------------------ the one way out
    def _end(
        self,
        status: int,
        error: ActivatorError | None = None,
        *,
        admitted: bool = True,
        abort: bool = False,
    ) -> None:
        """End the exchange, once: its deadline cleared; its replica connection kept (the whole
        answer came) or dropped; its slot given back and the request recorded (``admitted``:
        it reached the queue or a replica), or counted as a refusal; then the client told: the
        answer written (``error``'s, when none of the replica's went out) and the next request
        taken, or the connection closed (``abort``: without waiting for what it has not taken).
        """
        if self.ended:
            return
        self.ended = True
        conn, x = self.conn, self.x
        conn.door.deadlines.discard(self)
        upstream = self._detach()
        if upstream is not None:
            if self._done:
                conn.door.upstreams.give(upstream)
            else:
                upstream.abandon()
        if admitted:
            if self._scan is not None:
                x.usage = self._scan.usage
            x.finish(status)
        elif error is not None:
            x.refuse(error)
        if conn.closing:  # the client is gone: nobody to tell
            self._out = b""
            return
        if error is not None and not self._relayed:  # the error is the answer
            self._out = b""
            conn.respond(self.request, error_response(error, openai=x.route.endpoint.openai))
            return
        self._flush()
        # the answer is whole (the replica's, or a stream ended here): the connection goes on
        said_close = self._done and upstream is not None and upstream.said_close
        if (self._done or self._ended_here) and not (self._close_after or said_close):
            conn.next_request()
        elif abort:
            conn.abort()
        else:
            conn.close()


def _says(head: bytes, name: bytes, value: bytes) -> bool:
    """Whether a response head has header ``name`` (lower case) with ``value`` among its
    comma-separated values (before any ``;`` parameter), case aside."""
    for line in head.split(b"\r\n")[1:]:
        key, _, found = line.partition(b":")
        if key.strip().lower() == name:
            for part in found.split(b","):
                if part.split(b";", 1)[0].strip().lower() == value:
                    return True
    return False
