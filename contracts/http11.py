"""What both servers (the predictor and the activator's front door) say over HTTP/1.1 of their
own accord: the ``{"error": ...}`` body every failure leaves as (OpenAI's own shape of it on
the OpenAI-compatible routes), and the words of the
connection's hygiene (a late head, a stalled body, a websocket handshake). One place, so a
client sees the same answer whichever of the two it reached.
"""

from __future__ import annotations

import json


def error_body(message: str) -> bytes:
    """The body of every error answer: ``{"error": message}`` (the Open Inference Protocol's)."""
    return json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()


# the error types OpenAI's API gives, by status (a missing model and a bad key are invalid
# requests there too); anything else is a server error
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
MODEL_NOT_FOUND = "model_not_found"
# the event that ends an OpenAI stream whole (an error event ends one without it)
SSE_DONE = b"data: [DONE]"


def openai_error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> bytes:
    """The body of an error on an OpenAI-compatible route: ``{"error": {"message", "type",
    "param", "code"}}``, its type by status as OpenAI's API names them; ``code`` is
    :data:`MODEL_NOT_FOUND` for a model that does not exist."""
    error = {
        "message": message,
        "type": _OPENAI_TYPES.get(status, "server_error"),
        "param": param,
        "code": code,
    }
    return json.dumps({"error": error}, ensure_ascii=False, separators=(",", ":")).encode()


NO_WEBSOCKET = "this server speaks no websocket; use the v2 REST routes over HTTP/1.1"


def head_late(timeout_s: float) -> str:
    """Why a request whose head did not arrive in time is answered 408."""
    return f"request head not received within {timeout_s:g} s"


def body_stalled(timeout_s: float) -> str:
    """Why a request whose body paused too long is answered 408."""
    return f"request body stalled for more than {timeout_s:g} s"


def upgrade_with_body(upgrade: str) -> str:
    """Why an upgrade (other than a websocket) on a request with a body is refused."""
    return f"Upgrade: {upgrade} is not supported on a request with a body"
