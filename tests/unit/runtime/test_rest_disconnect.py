"""A client that leaves mid-body ends its request quietly: one DEBUG line, no traceback."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from tests.unit.runtime.rawhttp import connect, serving

LEFT = "client left during the body of POST /v2/repository/index"


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 100\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\na\r\n"],
    ids=["content-length", "chunked"],
)
def test_a_client_that_leaves_mid_body_is_one_debug_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, framing: bytes
) -> None:
    caplog.set_level(logging.DEBUG, logger="ember.runtime")
    with serving(tmp_path) as port:
        with connect(port) as sock:
            sock.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\n" + framing + b"{")
        deadline = time.monotonic() + 10
        while not any(r.getMessage() == LEFT for r in caplog.records):
            assert time.monotonic() < deadline, f"never logged {LEFT!r}: {caplog.text}"
            time.sleep(0.01)
    # the server has stopped: whatever the request was going to log, it has
    left = [r for r in caplog.records if r.getMessage() == LEFT]
    assert len(left) == 1 and left[0].levelno == logging.DEBUG
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
