"""uvicorn's httptools protocol: what it answers itself in the OIP shape, and read timeouts.

uvicorn answers a request its parser rejects with a plain-text 400, refuses a websocket handshake
with a bare 403, and waits for a slow client forever. :class:`OIPHttpProtocol` changes exactly
those paths, through the hooks uvicorn's ``HttpToolsProtocol`` has (pinned in ``pyproject.toml``):

- ``send_400_response`` (uvicorn calls it from its ``except HttpParserError``) writes
  ``{"error": ...}`` with the parser's reason;
- ``_should_upgrade`` / ``handle_websocket_upgrade`` turn a websocket handshake into a JSON 400;
- one timer per connection bounds the request head (``header_timeout_s``) and each pause in
  the body (``body_timeout_s``);
- an idle kept-alive connection closes after uvicorn's ``timeout_keep_alive``, its timer armed in
  one place (:meth:`OIPHttpProtocol._keep_alive`) and only while the connection is idle: its
  request answered and its body read, nothing pipelined. uvicorn arms it when an answer ends,
  which for a request answered before its body arrived (a 404, a 503) is while the body is
  still due.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from asyncio import TimerHandle
from typing import Any, Literal

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from contracts.http11 import NO_WEBSOCKET, body_stalled, error_body, head_late, upgrade_with_body

log = logging.getLogger("ember.runtime")

_Phase = Literal["idle", "head", "body"]


def error_bytes(status: int, message: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole ``{"error": message}`` response that closes the connection."""
    body = error_body(message)
    parts = [STATUS_LINE[status]]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    parts += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(parts)


class OIPHttpProtocol(HttpToolsProtocol):
    """HTTP/1.1 for the predictor; use :func:`protocol_class` to set the timeouts."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._phase: _Phase = "idle"
        self._timer: TimerHandle | None = None
        self._head_started: float | None = None
        self._body_read_at = 0.0

    # ------------------------------------------------------------------ errors in the OIP shape
    def send_400_response(self, msg: str) -> None:
        cycle = self.cycle
        if self._phase != "body" and cycle is not None and not cycle.response_complete:
            # the bad bytes follow a whole request whose answer is still due (pipelined): that
            # answer goes out first and whole, then the connection closes; a 400 written now
            # would be read as its answer
            cycle.keep_alive = False
            return
        error = sys.exc_info()[1]  # uvicorn calls this inside `except HttpParserError`
        self._answer_and_close(400, f"invalid HTTP request: {error}" if error else msg)

    def _should_upgrade(self) -> bool:
        # Asked only of a request with `Connection: upgrade`. True sends a websocket handshake to
        # handle_websocket_upgrade, which refuses it. Any other upgrade (h2c) is ignored and the
        # request answered over HTTP/1.1, except one with a body: httptools treats whatever
        # follows the head of an upgrade request as the new protocol, so its body would be lost.
        upgrade = self._get_upgrade()
        return upgrade == b"websocket" or (upgrade is not None and self._declares_body())

    def handle_websocket_upgrade(self) -> None:
        """Refuse the upgrade with 400: the predictor speaks no websocket on any path.

        400, not 404: the path may well be a route (``GET /v2/health/live`` with ``Upgrade:
        websocket``), so "not found" would be wrong; what the server cannot do is the upgrade
        the request asks for. The connection closes: what the client sends next is unknown.
        """
        upgrade = (self._get_upgrade() or b"").decode("latin-1")
        message = NO_WEBSOCKET if upgrade == "websocket" else upgrade_with_body(upgrade)
        self._answer_and_close(400, message)

    def _unsupported_upgrade_warning(self) -> None:
        log.debug("ignored Upgrade: %r; answered over HTTP/1.1", self._get_upgrade())

    def _declares_body(self) -> bool:
        return any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
            for name, value in self.headers
        )

    def _answer_and_close(self, status: int, message: str) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            # never in the middle of a response already being written
            self.transport.write(error_bytes(status, message, self.server_state.default_headers))
        self.transport.close()

    # ------------------------------------------------------------------ timeouts
    # One timer per connection, armed only when a feed of bytes leaves a request unfinished, and
    # moved on lazily when it fires: a request that arrives in one read costs no timer at all.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_started = self.loop.time()  # the first request's head counts from here
        self._timer = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        idle = self.timeout_keep_alive_task
        super().data_received(data)  # cancels uvicorn's keep-alive timer
        if self.transport.is_closing():
            return
        if self._phase != "idle":
            deadline = self._deadline()
            if self._timer is None or self._timer.when() > deadline:  # e.g. head done, body due
                self._disarm()
                self._timer = self.loop.call_at(deadline, self._timed_out)
        elif idle is not None and self.timeout_keep_alive_task is None:
            # bytes that began no request (llhttp skips stray CRLFs) keep the idle deadline
            self._keep_alive(idle.when())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._unset_keepalive_if_required()  # a request begins: the connection is not idle
        self._phase = "head"
        if self._head_started is None:  # a later request's head counts from its first byte
            self._head_started = self.loop.time()

    def on_headers_complete(self) -> None:
        self._phase = "body"
        self._body_read_at = self.loop.time()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_read_at = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase, self._head_started = "idle", None
        self._disarm()
        super().on_message_complete()
        self._keep_alive()  # answered before the body ended: idle from now

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer when nothing is pipelined
        self._keep_alive()  # kept only if the connection is idle (not if the body is still due)

    def _keep_alive(self, when: float | None = None) -> None:
        """(Re)arm the idle timer of a kept-alive connection, at ``when`` or a full
        ``timeout_keep_alive`` from now: the one timer, and only while the connection is idle
        (its request answered and read whole, nothing pipelined); otherwise none is left."""
        self._unset_keepalive_if_required()
        cycle = self.cycle
        idle = self._phase == "idle" and not self.pipeline
        if not idle or cycle is None or not cycle.response_complete or self.transport.is_closing():
            return
        if when is None:
            when = self.loop.time() + self.timeout_keep_alive
        self.timeout_keep_alive_task = self.loop.call_at(when, self.timeout_keep_alive_handler)

    def _deadline(self) -> float:
        if self._phase == "body":
            if self.flow.read_paused or self.cycle.waiting_for_100_continue:
                self._body_read_at = self.loop.time()  # the app has not asked for more yet
            return self._body_read_at + self.body_timeout_s
        assert self._head_started is not None
        return self._head_started + self.header_timeout_s

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase == "idle":  # a new connection that sent nothing of a request
            self.transport.close()
            return
        deadline = self._deadline()
        if self.loop.time() < deadline:  # bytes came since it was armed
            self._timer = self.loop.call_at(deadline, self._timed_out)
        elif self._phase == "head":
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False  # a pipelined head: the answer in flight goes out first
            else:
                self._answer_and_close(408, head_late(self.header_timeout_s))
        elif self.cycle is not None and self.cycle.response_complete:
            self.transport.close()  # answered already (a body refused unread): no second answer
        else:
            self._answer_and_close(408, body_stalled(self.body_timeout_s))


def protocol_class(*, header_timeout_s: float, body_timeout_s: float) -> type[OIPHttpProtocol]:
    """:class:`OIPHttpProtocol` with these timeouts, for ``uvicorn.Config(http=...)``."""
    head, body = header_timeout_s, body_timeout_s

    class Configured(OIPHttpProtocol):
        header_timeout_s = head
        body_timeout_s = body

    return Configured
