"""A request that asks to switch protocols, declined.

A request asking to switch protocols (h2c) is answered over HTTP/1.1, as a proxy that speaks no
other protocol does; a websocket handshake and a CONNECT are refused (400). httptools stops at
the end of such a request's head, taking what follows for the new protocol: the connection reads
its body (``content-length`` bytes, :func:`body_length`) from where the parser stopped
(:func:`stopped_at`), then a fresh parser goes on with what follows.
"""

from __future__ import annotations

import httptools

from activator.errors import BadRequest
from activator.http import Request
from contracts.http11 import NO_WEBSOCKET


def body_length(request: Request | None) -> int:
    """The length of the body that follows the head of a request that asked to switch
    protocols; BadRequest if it is refused."""
    if request is None or request.method == b"CONNECT":
        raise BadRequest("CONNECT and protocol upgrades are not supported")
    if (b"upgrade", b"websocket") in [(k, v.lower()) for k, v in request.headers]:
        # refused, as the predictor refuses it: a websocket client would take a plain answer
        # for a broken handshake, where it should learn the server speaks none
        raise BadRequest(NO_WEBSOCKET)
    length = 0
    for name, value in request.headers:
        if name == b"transfer-encoding":
            raise BadRequest("an upgrade request's body must have a length")
        if name == b"content-length":
            length = int(value)  # the parser checked it is a number
    return length


def stopped_at(exc: httptools.HttpParserUpgrade, data: bytes) -> int:
    """Where in ``data`` the parser stopped: the bytes it left for the new protocol begin."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
