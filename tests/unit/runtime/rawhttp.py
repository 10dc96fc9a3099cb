"""The predictor's app (no models) under the predictor's uvicorn config, in-process on port 0,
and what a raw-socket client needs to talk to it."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from contracts.sockets import bind
from runtime.app import create_app
from runtime.config import ServerSettings
from runtime.server import uvicorn_config


@contextmanager
def serving(tmp_path: Path, *, keep_alive_s: float | None = None, **settings: Any) -> Iterator[int]:
    """``with serving(tmp_path, header_timeout_s=0.5) as port:`` (any ServerSettings field;
    ``keep_alive_s`` sets uvicorn's idle keep-alive, 5 s otherwise)."""
    s = ServerSettings(port=0, load_on_start=False, cache_dir=tmp_path / "cache", **settings)
    config = uvicorn_config(create_app(s, []), s)
    if keep_alive_s is not None:
        config.timeout_keep_alive = keep_alive_s  # read by each connection's protocol
    server = uvicorn.Server(config)
    sock = bind("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """One response off the socket: status, headers (lower-cased names), the JSON body."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    headers = {name.lower(): value for name, value in response.getheaders()}
    return response.status, headers, orjson.loads(body) if body else None


def assert_closed(sock: socket.socket) -> None:
    """The server closes the connection (within the socket's timeout), having sent nothing more."""
    assert sock.recv(1) == b""


def assert_oip_error(status: int, headers: dict[str, str], body: Any, expected: int) -> None:
    assert status == expected
    assert headers["content-type"] == "application/json"
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)
