"""A loopback HTTP endpoint that answers like S3 but sends its bodies one byte at a time.

Every ``GET`` of any key is answered ``206`` with the ranged bytes of ``body`` (the whole of it
without a ``Range``), written ``interval_s`` apart (0: all at once); ``HEAD`` is answered at once
with the object's size and ETag (with ``stall_head``: never, until the server stops).
Connections are kept alive (HTTP/1.1). It binds 127.0.0.1 port 0, counts GETs and connections,
and stops with the test: :meth:`stop` ends every trickle at once.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ETAG = '"trickle"'


class TrickleServer:
    def __init__(self, body: bytes, *, interval_s: float, stall_head: bool = False) -> None:
        self.body = body
        self.interval_s = interval_s
        self.stall_head = stall_head
        self.gets = 0
        self.peers: set[tuple[str, int]] = set()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> TrickleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def seen(self, peer: tuple[str, int]) -> None:
        with self._lock:
            self.gets += 1
            self.peers.add(peer)


def _handler(server: TrickleServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            if server.stall_head:
                server.stopping.wait()
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(server.body)))
            self.send_header("ETag", ETAG)
            self.end_headers()

        def do_GET(self) -> None:
            server.seen(self.client_address[:2])
            start, end = 0, len(server.body) - 1
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
            if match:
                start, end = int(match[1]), min(int(match[2]), end)
            data = server.body[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(server.body)}")
            self.send_header("ETag", ETAG)
            self.end_headers()
            try:
                if not server.interval_s:
                    self.wfile.write(data)
                    return
                for i in range(len(data)):
                    # the pace of the trickle, and how it ends when the test stops the server
                    if server.stopping.wait(server.interval_s):
                        self.close_connection = True
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
            except OSError:  # the client gave up on it: what the test wants
                self.close_connection = True

    return Handler
