"""A loopback HTTP proxy in front of the S3 test server that injects faults on request.

Each connection carries one request (the proxy answers ``Connection: close``). Faults are queued
rules matched in order by method and path substring, each good for ``times`` requests:

* ``("status", 503, "SlowDown")``: answer an S3 XML error without forwarding;
* ``("reset",)``: forward, send the headers and half the body, then drop the connection;
* ``("stall", seconds)``: say nothing for that long, then drop the connection.

Everything else is forwarded unchanged. It binds 127.0.0.1 port 0 and stops with the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class Rule:
    action: tuple[Any, ...]
    method: str | None = None
    path: str | None = None
    times: int = 1


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(
        self, *action: Any, method: str | None = None, path: str | None = None, times: int = 1
    ) -> None:
        with self._lock:
            self.rules.append(Rule(action, method, path, times))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.requests.clear()

    def _match(self, method: str, path: str) -> tuple[Any, ...] | None:
        with self._lock:
            self.requests.append((method, path))
            for rule in self.rules:
                if rule.times <= 0:
                    continue
                if rule.method and rule.method != method:
                    continue
                if rule.path and rule.path not in path:
                    continue
                rule.times -= 1
                return rule.action
        return None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._server = server
            self._ready.set()
            async with server:
                await server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(serve())

    def stop(self) -> None:
        def cancel() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        self._loop.call_soon_threadsafe(cancel)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            method, path = head.split(b" ", 2)[:2]
            action = self._match(method.decode(), path.decode())
            if action and action[0] == "status":
                _, status, code = action
                xml = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>injected {code}</Message></Error>"
                ).encode()
                writer.write(
                    f"HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\n"
                    f"Content-Length: {len(xml)}\r\nConnection: close\r\n\r\n".encode()
                    + xml
                )
                await writer.drain()
                return
            if action and action[0] == "stall":
                await asyncio.sleep(action[1])
                return
            response = await self._forward(head, body)
            if action and action[0] == "reset":
                split = response.index(b"\r\n\r\n") + 4
                cut = split + (len(response) - split) // 2
                writer.write(response[:cut])
                await writer.drain()
                writer.transport.abort()
                return
            writer.write(response)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _forward(self, head: bytes, body: bytes) -> bytes:
        lines = [
            line
            for line in head.rstrip(b"\r\n").split(b"\r\n")
            if not line.lower().startswith(b"connection:")
        ]
        request = b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        up_writer.write(request)
        await up_writer.drain()
        response = await up_reader.read()
        up_writer.close()
        split = response.index(b"\r\n\r\n")
        header_lines = [
            line
            for line in response[:split].split(b"\r\n")
            if not line.lower().startswith(b"connection:")
        ]
        return b"\r\n".join([*header_lines, b"Connection: close"]) + response[split:]
