"""HTTP pieces every path of the activator shares: the parsed request, the answer, header rules,
the error renderer.

The front door parses a :class:`Request` once; the activator's own endpoints answer it with a
:class:`Response`, which the front door writes (:func:`head`). Every ``{"error": ...}`` body the
activator sends (its own answer or a relayed request's) is made by :func:`error_response`, from
an :class:`~activator.errors.ActivatorError`: its status, its extra headers
(``WWW-Authenticate``), ``Retry-After`` when it has one, and the OIP body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from activator.errors import ActivatorError, BadRequest, UnknownModel
from contracts.http11 import MODEL_NOT_FOUND, error_body, openai_error_body

Headers = list[tuple[bytes, bytes]]

JSON = (b"content-type", b"application/json")
# the "connection" header lines the front door puts into an answer's head: "close" when the
# connection ends after it; "keep-alive" when an HTTP/1.0 client's connection stays open (its
# protocol's default is to close, so it is told, as nginx and Triton tell it)
CLOSE = b"connection: close\r\n"
KEEP_ALIVE = b"connection: keep-alive\r\n"

# hop-by-hop headers, ours, and credentials (the activator's tokens end here): never passed
# between client and replica. ``expect``: the activator has the whole body before it forwards.
HOP_HEADERS = frozenset(
    {
        b"authorization",
        b"proxy-authorization",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"host",
        b"content-length",
        b"te",
        b"upgrade",
        b"proxy-connection",
        b"expect",
        b"ember-deadline-ms",
        b"ember-usage",  # the activator's to send (contracts.replica.USAGE_HEADER), not a client's
    }
)

REASONS = {
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


@dataclass(slots=True)
class Request:
    """A request the front door parsed off a client connection."""

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


@dataclass(frozen=True, slots=True)
class Response:
    """An answer of the activator's own (the front door adds ``content-length``)."""

    status: int
    headers: Headers
    body: bytes


def json_response(status: int, payload: Any, headers: Headers | None = None) -> Response:
    return Response(status, [JSON, *(headers or [])], json.dumps(payload).encode())


def error_response(exc: ActivatorError, *, openai: bool = False) -> Response:
    """The one way an activator error becomes an answer: status, headers, ``{"error": ...}``
    (``openai``: on an OpenAI-compatible route, in OpenAI's shape of it)."""
    headers = list(exc.headers)
    if exc.retry_after_s is not None:
        headers.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
    if openai:
        param = exc.param if isinstance(exc, BadRequest) else None
        code = MODEL_NOT_FOUND if isinstance(exc, UnknownModel) else None
        body = openai_error_body(exc.status_code, str(exc), param, code)
    else:
        body = error_body(str(exc))
    return Response(exc.status_code, [JSON, *headers], body)


def head(
    status: int, headers: Headers, length: int, *, close: bool, keep_alive: bool = False
) -> bytes:
    """An HTTP/1.1 response head, for the front door's own writes: ``close`` says the
    connection ends after it, ``keep_alive`` that it stays open (for an HTTP/1.0 client)."""
    out = [b"HTTP/1.1 ", str(status).encode(), b" ", REASONS.get(status, b"Unknown"), b"\r\n"]
    for name, value in headers:
        out += [name, b": ", value, b"\r\n"]
    out += [b"content-length: ", str(length).encode(), b"\r\n"]
    if close:
        out.append(CLOSE)
    elif keep_alive:
        out.append(KEEP_ALIVE)
    out.append(b"\r\n")
    return b"".join(out)


def says_close(response_head: bytes) -> bool:
    """Whether a response head (status line and headers) has ``connection: close``."""
    for line in response_head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        tokens = [token.strip() for token in value.lower().split(b",")]
        if name.strip().lower() == b"connection" and b"close" in tokens:
            return True
    return False
