"""The one error renderer: every ``{"error": ...}`` the activator sends is made here."""

from __future__ import annotations

import json

import pytest

from activator.errors import (
    ActivatorError,
    BadRequest,
    DeadlineExceeded,
    ModelUnavailable,
    QueueFull,
    ReplicaFailed,
    ReplicaStartFailed,
    ShuttingDown,
    StartFailure,
    Unauthorized,
)
from activator.http import error_response, head


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (BadRequest("bad"), 400, None),
        (Unauthorized("who"), 401, None),
        (QueueFull("full"), 503, "1"),
        (ShuttingDown("bye"), 503, "1"),
        (ModelUnavailable("broken"), 503, "5"),
        (ReplicaStartFailed("no weights", StartFailure.LOAD_FAILED), 503, "5"),
        (DeadlineExceeded("late"), 504, None),
        (ReplicaFailed("gone"), 502, None),
        (ActivatorError("ours"), 500, None),
    ],
)
def test_errors_render_in_the_oip_shape_with_their_status(
    error: ActivatorError, status: int, retry_after: str | None
) -> None:
    response = error_response(error)
    headers = dict(response.headers)
    assert response.status == status
    assert json.loads(response.body) == {"error": str(error)}
    assert headers[b"content-type"] == b"application/json"
    assert headers.get(b"retry-after") == (retry_after.encode() if retry_after else None)


def test_unauthorized_says_how_to_authenticate() -> None:
    headers = dict(error_response(Unauthorized("token")).headers)
    assert headers[b"www-authenticate"].startswith(b"Bearer")


def test_a_message_that_needs_escaping_stays_valid_json() -> None:
    message = 'a "quoted" \\ path\nwith a newline and \u00e9'
    assert json.loads(error_response(BadRequest(message)).body)["error"] == message


def test_the_head_the_front_door_writes() -> None:
    text = head(503, [(b"retry-after", b"1")], 12, close=True)
    assert text == (
        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 12\r\n"
        b"connection: close\r\n\r\n"
    )
    assert head(299, [], 0, close=False).startswith(b"HTTP/1.1 299 Unknown\r\n")
