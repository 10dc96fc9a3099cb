"""runtime.http_protocol under the predictor's real uvicorn config, over raw sockets: what uvicorn
answers itself is ``{"error": ...}``, a websocket handshake is refused, slow clients time out."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runtime.http_protocol import OIPHttpProtocol, error_bytes, protocol_class
from tests.unit.runtime.rawhttp import (
    assert_closed,
    assert_oip_error,
    connect,
    read_response,
    serving,
)

INDEX = b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\n"
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"


def test_error_bytes_is_a_closing_json_response() -> None:
    raw = error_bytes(408, 'say "hi"', [(b"x-a", b"1")])
    head, body = raw.split(b"\r\n\r\n")
    assert head.splitlines()[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"x-a: 1" in head and b"connection: close" in head
    assert b"content-type: application/json" in head
    assert body == b'{"error":"say \\"hi\\""}' and b"content-length: %d" % len(body) in head


def test_protocol_class_sets_the_timeouts() -> None:
    cls = protocol_class(header_timeout_s=1.5, body_timeout_s=2.5)
    assert issubclass(cls, OIPHttpProtocol)
    assert (cls.header_timeout_s, cls.body_timeout_s) == (1.5, 2.5)
    assert (OIPHttpProtocol.header_timeout_s, OIPHttpProtocol.body_timeout_s) == (10.0, 30.0)


# ------------------------------------------------------------------------ parser errors: 400


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (INDEX + b"Content-Length: -1\r\n\r\n", "Content-Length"),
        (INDEX + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"get /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", "method"),
    ],
    ids=["negative-content-length", "bad-chunk-size", "lowercase-method"],
)
def test_a_request_the_parser_rejects_gets_a_json_400(
    tmp_path: Path, request_bytes: bytes, reason: str
) -> None:
    with serving(tmp_path) as port, connect(port) as sock:
        sock.sendall(request_bytes)
        status, headers, body = read_response(sock)
        assert_oip_error(status, headers, body, 400)
        assert body["error"].startswith("invalid HTTP request: ") and reason in body["error"]
        assert headers["connection"] == "close"
        assert_closed(sock)


def test_bad_bytes_behind_a_pipelined_request_never_take_its_answer(tmp_path: Path) -> None:
    with serving(tmp_path) as port, connect(port) as sock:
        sock.sendall(LIVE + b"NOT HTTP AT ALL\r\n\r\n")  # one read: parsed before it is answered
        status, _, body = read_response(sock)
        assert (status, body) == (200, {"live": True})  # its own answer, whole
        assert_closed(sock)  # then the connection ends: what followed was no request


# ------------------------------------------------------------------------ upgrades


def test_a_websocket_handshake_gets_a_json_400(tmp_path: Path) -> None:
    handshake = (
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with serving(tmp_path) as port, connect(port) as sock:
        sock.sendall(handshake)
        status, headers, body = read_response(sock)
        assert_oip_error(status, headers, body, 400)
        assert "websocket" in body["error"]
        assert_closed(sock)


def test_an_h2c_upgrade_is_answered_over_http_1_1(tmp_path: Path) -> None:
    h2c = (
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    with serving(tmp_path) as port, connect(port) as sock:
        sock.sendall(h2c)
        assert read_response(sock)[::2] == (200, {"live": True})
        sock.sendall(LIVE)  # the connection still speaks HTTP/1.1
        assert read_response(sock)[::2] == (200, {"live": True})


def test_an_upgrade_with_a_body_is_refused_rather_than_losing_the_body(tmp_path: Path) -> None:
    # httptools reads what follows an upgrade request's head as the new protocol
    request = (
        INDEX + b'Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 15\r\n\r\n{"ready": true}'
    )
    with serving(tmp_path) as port, connect(port) as sock:
        sock.sendall(request)
        status, headers, body = read_response(sock)
        assert_oip_error(status, headers, body, 400)
        assert "h2c" in body["error"]


# ------------------------------------------------------------------------ timeouts


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, header_timeout_s=0.3) as port, connect(port) as sock:
        started = time.monotonic()
        assert_closed(sock)  # nothing of a request arrived: no answer, just the close
        assert time.monotonic() - started >= 0.25


def test_a_half_sent_head_gets_408(tmp_path: Path) -> None:
    with serving(tmp_path, header_timeout_s=0.3) as port, connect(port) as sock:
        sock.sendall(INDEX + b"Content-Length: 2\r\n")
        status, headers, body = read_response(sock)
        assert_oip_error(status, headers, body, 408)
        assert body["error"] == "request head not received within 0.3 s"
        assert headers["connection"] == "close"
        assert_closed(sock)


def test_a_later_requests_head_is_timed_from_its_first_byte(tmp_path: Path) -> None:
    with serving(tmp_path, header_timeout_s=0.3) as port, connect(port) as sock:
        sock.sendall(LIVE)
        assert read_response(sock)[0] == 200
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        status, headers, body = read_response(sock)
        assert_oip_error(status, headers, body, 408)


def test_a_stalled_body_gets_408(tmp_path: Path) -> None:
    with serving(tmp_path, body_timeout_s=0.3) as port, connect(port) as sock:
        sock.sendall(INDEX + b"Content-Length: 15\r\n\r\n" + b'{"ready"')
        status, headers, body = read_response(sock)
        assert_oip_error(status, headers, body, 408)
        assert body["error"] == "request body stalled for more than 0.3 s"
        assert_closed(sock)


def test_the_body_timeout_bounds_each_pause_not_the_whole_body(tmp_path: Path) -> None:
    pieces = [b'{"re', b'ady"', b": tr", b"ue}"]
    with serving(tmp_path, body_timeout_s=0.6) as port, connect(port) as sock:
        sock.sendall(INDEX + b"Content-Length: 15\r\n\r\n")
        started = time.monotonic()
        for piece in pieces:
            sock.settimeout(0.25)  # each pause is shorter than the timeout...
            with pytest.raises(TimeoutError):
                sock.recv(1)  # ...and nothing (no 408) comes during it
            sock.sendall(piece)
        sock.settimeout(5)
        assert time.monotonic() - started > 0.6  # ...while the whole body took longer
        status, _, body = read_response(sock)
        assert (status, body) == (200, [])


def test_the_header_timeout_stops_counting_once_the_head_is_whole(tmp_path: Path) -> None:
    with serving(tmp_path, header_timeout_s=0.3, body_timeout_s=5) as port, connect(port) as sock:
        sock.sendall(INDEX + b"Content-Length: 15\r\n\r\n" + b'{"ready"')
        sock.settimeout(0.6)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # past the header timeout, the body may still take its time
        sock.settimeout(5)
        sock.sendall(b": true}")
        status, _, body = read_response(sock)
        assert (status, body) == (200, [])


def test_stray_newlines_do_not_keep_an_idle_connection_open(tmp_path: Path) -> None:
    with serving(tmp_path, keep_alive_s=0.3) as port, connect(port) as sock:
        sock.sendall(LIVE)
        assert read_response(sock)[0] == 200
        sock.sendall(b"\r\n")  # begins no request, and must not cancel the idle timeout
        assert_closed(sock)


def test_a_connection_answered_before_its_body_ended_still_idles_out(tmp_path: Path) -> None:
    with serving(tmp_path, keep_alive_s=0.3) as port, connect(port) as sock:
        sock.sendall(b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        assert read_response(sock)[0] == 404  # an unknown model is refused before the body
        sock.sendall(b"{}")
        assert_closed(sock)


def test_a_connection_answered_before_its_body_ended_stays_open_while_busy(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, keep_alive_s=0.3) as port, connect(port) as sock:
        sock.sendall(b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        assert read_response(sock)[0] == 404  # answered before its body (as httpx writes it)
        sock.sendall(b"{}")  # the body, then at once the next request, busy past the keep-alive
        sock.sendall(INDEX + b"Content-Length: 15\r\n\r\n" + b'{"ready"')
        sock.settimeout(0.8)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # the connection is busy with a request: no idle timer closes it
        sock.settimeout(5)
        sock.sendall(b": true}")
        status, _, body = read_response(sock)
        assert (status, body) == (200, [])
        assert_closed(sock)  # and once idle again, it idles out
