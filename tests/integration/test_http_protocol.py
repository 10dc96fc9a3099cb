"""A real ``ember serve --header-timeout 0.5 --body-timeout 0.5 --log-level debug`` of examples/mlp
over raw sockets: what uvicorn itself answers is ``{"error": ...}``, slow clients get 408, and a
client that leaves mid-body costs one DEBUG line, not a traceback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import MLP_CONFIG
from tests.servers import ServerProcess, running_server
from tests.unit.runtime.rawhttp import assert_closed, assert_oip_error, connect, read_response

INFER = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture(scope="module")
def server(mlp_weights: None) -> Iterator[ServerProcess]:
    args = ("--header-timeout", "0.5", "--body-timeout", "0.5", "--log-level", "debug")
    with running_server(MLP_CONFIG, *args) as server:
        yield server


@pytest.fixture
def port(server: ServerProcess) -> int:
    port = urlsplit(server.url).port
    assert port is not None
    return port


def test_a_bad_content_length_is_a_json_400(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(INFER + b"Content-Length: -1\r\n\r\n")
        status, headers, body = read_response(sock)
        assert_oip_error(status, headers, body, 400)
        assert_closed(sock)


def test_a_websocket_handshake_is_a_json_400(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert_oip_error(*read_response(sock), 400)


def test_a_trailing_slash_is_a_json_404(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(
            b"POST /v2/models/mlp/infer/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        )
        status, headers, body = read_response(sock)
        assert_oip_error(status, headers, body, 404)
        assert body == {"error": "no route for /v2/models/mlp/infer/"}


def test_the_timeout_flags_reach_the_server(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(INFER)
        status, headers, body = read_response(sock)
        assert_oip_error(status, headers, body, 408)
        assert body["error"] == "request head not received within 0.5 s"
    with connect(port) as sock:
        sock.sendall(INFER + b"Content-Length: 100\r\n\r\n{")
        status, headers, body = read_response(sock)
        assert_oip_error(status, headers, body, 408)
        assert body["error"] == "request body stalled for more than 0.5 s"


def test_a_client_that_leaves_mid_body_logs_one_debug_line(
    server: ServerProcess, port: int
) -> None:
    line = "DEBUG ember.runtime: client left during the body of POST /v2/models/mlp/infer"
    before = server.output.count(line)  # a 408 above ends its request the same way
    with connect(port) as sock:
        sock.sendall(INFER + b"Content-Length: 100\r\n\r\n{")
    deadline = time.monotonic() + 10
    while server.output.count(line) == before:
        assert time.monotonic() < deadline, server.output
        time.sleep(0.01)
    assert "Traceback" not in server.output and "ClientDisconnect" not in server.output
