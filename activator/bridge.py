"""The front door's way into the activator's own ASGI app, for the requests it does not relay.

Health, metadata, the repository, statistics, ``/metrics`` and the admin API are answered by
:class:`activator.app.Activator`; a request for one of them arrives whole (the front door has read
its body), so the bridge hands it over in one ``http.request`` message and collects the answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

import httptools

from activator.app import Activator
from activator.errors import ActivatorError
from activator.http import Headers, error_response

log = logging.getLogger("ember.activator")

Answer = tuple[int, Headers, bytes]


async def answer(
    activator: Activator,
    method: bytes,
    raw_url: bytes,
    headers: Headers,
    body: bytes,
    peer: Any,
    gone: asyncio.Future[None],
) -> Answer:
    """What the app answers (status, headers less ``content-length``, body); ``gone`` completes
    when the client leaves (the app's ``http.disconnect``)."""
    url = httptools.parse_url(raw_url)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method.decode("latin-1"),
        "scheme": "http",
        "path": unquote(url.path.decode("latin-1")),
        "raw_path": url.path,
        "query_string": url.query or b"",
        "headers": headers,
        "client": peer,
        "server": None,
    }
    sent_body = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.shield(gone)
        return {"type": "http.disconnect"}

    response: dict[str, Any] = {}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            response["status"] = message["status"]
            response["headers"] = message.get("headers", [])
        elif message["type"] == "http.response.body":
            kept = [(k, v) for k, v in response["headers"] if k.lower() != b"content-length"]
            response["answer"] = (response["status"], kept, message.get("body", b""))

    try:
        await activator(scope, receive, send)
    except Exception:
        log.exception("unexpected error answering %s", raw_url)
    if "answer" not in response:  # the app always answers; if it did not, say so
        error = error_response(ActivatorError("the activator gave no answer"))
        return error.status, error.headers, error.body
    result: Answer = response["answer"]
    return result
