"""The data path in one process: the front door, the activator and in-process replicas.

Each replica here is a small asyncio HTTP/1.1 server in the test's own loop, whose behaviour the
test picks (answer, drop the connection after reading the request, never answer, refuse
connections), and the scaler hands them out; no subprocess, no torch. What is checked: a request
is relayed unchanged, a request that never reached a replica is tried on another one, one that
did is not, every request is recorded once with its status, the queue's and the data path's
errors come in the OIP shape from the one renderer, and nothing holds a slot afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import httpx
import pytest

from activator import frontdoor
from activator.app import Activator
from activator.events import read_events
from activator.frontdoor import FrontDoor
from activator.scalers.base import ReplicaHandle
from contracts.stack import ActivatorSettings, ModelSpec, StackConfig
from tests.fixtures.specs import model_spec


class Replica:
    """An in-process HTTP/1.1 server; ``mode``: answer | drop | hang | cut | error."""

    def __init__(self, mode: str = "answer") -> None:
        self.mode = mode
        self.received: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
        self.server: asyncio.AbstractServer | None = None
        self.url = ""
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        done: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []

        class Parsed:
            url = b""
            headers: list[tuple[bytes, bytes]] = []
            body = b""

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                self.headers = [*self.headers, (name.lower(), value)]

            def on_body(self, body: bytes) -> None:
                self.body += body

            def on_message_complete(self) -> None:
                done.append((parser.get_method(), self.url, self.headers, self.body))
                self.url, self.headers, self.body = b"", [], b""

        parser = httptools.HttpRequestParser(Parsed())
        answered = 0
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                parser.feed_data(data)
                while done:
                    request = done.pop(0)
                    self.received.append(request)
                    answered += 1
                    if self.mode == "error" and answered == 1:  # a 500 that keeps quiet...
                        writer.write(
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
                        )
                        continue
                    if self.mode == "error":  # ... about the connection it will not serve again
                        writer.close()
                        return
                    if self.mode == "drop":
                        writer.close()
                        return
                    if self.mode == "hang":
                        continue
                    if self.mode == "cut":  # its head, half its body, then it dies
                        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 232\r\n\r\n{"out')
                        await writer.drain()
                        writer.close()
                        return
                    body = json.dumps({"path": request[1].decode(), "echo": len(request[3])})
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"x-replica: yes\r\ncontent-length: "
                        + str(len(body)).encode()
                        + b"\r\n\r\n"
                        + (b"" if request[0] == b"HEAD" else body.encode())
                    )
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.close()


@dataclass
class Scaler:
    """Hands out the test's replicas in order; a closed port stands for an unreachable one."""

    replicas: list[Replica | None]
    started: int = 0
    exits: dict[str, asyncio.Event] = field(default_factory=dict)

    async def start(self, spec: ModelSpec) -> ReplicaHandle:
        replica = self.replicas[min(self.started, len(self.replicas) - 1)]
        self.started += 1
        if replica is None:  # unreachable: a port nobody listens on
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                url = f"http://127.0.0.1:{s.getsockname()[1]}"
        else:
            url = replica.url or await replica.start()
        handle = ReplicaHandle(spec.name, url)
        self.exits[url] = asyncio.Event()
        return handle

    async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        return None

    async def wait_exit(self, handle: ReplicaHandle) -> str:
        await self.exits[handle.url].wait()
        return "stopped"

    async def healthy(self, handle: ReplicaHandle) -> bool:
        return False  # a suspect replica is drained (and a new one started)

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        self.exits[handle.url].set()

    async def aclose(self) -> None:
        for replica in self.replicas:
            if replica is not None:
                await replica.stop()


@dataclass
class Harness:
    url: str
    activator: Activator
    door: FrontDoor
    events_path: Path
    client: httpx.AsyncClient

    def events(self, kind: str = "request") -> list[dict[str, Any]]:
        self.activator.events.flush()
        return [e for e in read_events(self.events_path) if e["event"] == kind]


def spec_of(**kw: Any) -> ModelSpec:
    return model_spec(**{"container_concurrency": 4, "target": 4.0, "keep_alive_s": 30.0, **kw})


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path,
    replicas: list[Replica | None],
    *,
    request_timeout_s: float = 300.0,
    scaler: type[Scaler] | None = None,
    **spec: Any,
) -> AsyncIterator[Harness]:
    events = tmp_path / "events.jsonl"
    settings = ActivatorSettings(events=events, grace_period_s=0.2)
    models = {"m": spec_of(**spec)}
    stack = StackConfig(path=tmp_path / "ember.yaml", settings=settings, models=models)
    activator = Activator(stack, (scaler or Scaler)(replicas))
    door = FrontDoor(activator, request_timeout_s=request_timeout_s)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop = asyncio.Event()
    served = asyncio.create_task(door.serve(sock, stop))
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        try:
            yield Harness(url, activator, door, events, client)
        finally:
            stop.set()
            await asyncio.wait_for(served, 10)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


BODY = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})


async def test_a_request_at_zero_waits_then_warm_ones_are_relayed_unchanged(
    tmp_path: Path,
) -> None:
    replica = Replica()
    async with serving(tmp_path, [replica]) as h:
        cold = await h.client.post("/v2/models/m/infer?x=1", content=BODY, headers={"X-Trace": "t"})
        assert cold.status_code == 200 and cold.headers["x-replica"] == "yes"
        assert cold.json() == {"path": "/v2/models/m/infer?x=1", "echo": len(BODY)}
        warm = await h.client.post("/v2/models/m/versions/1/infer", content=BODY)
        assert warm.status_code == 200
        method, url, headers, body = replica.received[0]
        assert (method, url) == (b"POST", b"/v2/models/m/infer?x=1")
        assert (b"x-trace", b"t") in headers and body == BODY.encode()
        assert dict(headers)[b"host"] == replica.url.removeprefix("http://").encode()
        pool = h.activator.pools["m"]
        await until(lambda: pool.in_flight == 0, "slots given back")
        requests = h.events()
        assert [(e["status"], e["cold"]) for e in requests] == [(200, True), (200, False)]


async def test_a_replica_that_cannot_be_reached_is_left_for_another(tmp_path: Path) -> None:
    good = Replica()
    async with serving(tmp_path, [None, good]) as h:
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 200, r.text
        assert len(good.received) == 1  # the request, once, on the second replica
        (event,) = h.events()
        assert event["status"] == 200


async def test_a_request_no_replica_could_be_reached_for_is_a_502(tmp_path: Path) -> None:
    async with serving(tmp_path, [None]) as h:
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 502
        assert "no replica could be reached" in r.json()["error"]
        assert [e["status"] for e in h.events()] == [502]
        assert h.activator.pools["m"].in_flight == 0


async def test_a_replica_that_drops_a_request_it_received_is_a_502_not_retried(
    tmp_path: Path,
) -> None:
    dropping, spare = Replica("drop"), Replica()
    async with serving(tmp_path, [dropping, spare]) as h:
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 502
        assert "went away before it answered" in r.json()["error"]
        assert "not retried" in r.json()["error"]
        assert len(dropping.received) == 1 and spare.received == []  # never sent twice
        # the suspect replica is checked, drained, and the next request gets a new one
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 200 and len(spare.received) == 1
        assert [e["status"] for e in h.events()] == [502, 200]


async def test_a_replica_that_holds_a_request_too_long_is_a_504(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frontdoor, "SWEEP_S", 0.05)
    async with serving(tmp_path, [Replica("hang")], request_timeout_s=0.2) as h:
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 504 and "did not answer within 0.2s" in r.json()["error"]
        assert [e["status"] for e in h.events()] == [504]
        await until(lambda: h.activator.pools["m"].in_flight == 0, "the slot given back")


async def test_queue_errors_and_bad_headers_come_from_the_one_renderer(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()], queue_size=0) as h:
        full = await h.client.post("/v2/models/m/infer", content=BODY)  # at zero, no queue room
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert "queue full" in full.json()["error"]
        bad = await h.client.post(
            "/v2/models/m/infer", content=BODY, headers={"Ember-Deadline-Ms": "soon"}
        )
        assert bad.status_code == 400 and "milliseconds" in bad.json()["error"]
        missing = await h.client.post("/v2/models/nope/infer", content=BODY)
        assert missing.status_code == 404 and "not configured" in missing.json()["error"]
        assert [e["status"] for e in h.events()] == [503, 400]  # a known model's requests


async def test_a_client_that_leaves_the_queue_is_recorded_and_frees_its_place(
    tmp_path: Path,
) -> None:
    class Slow(Scaler):
        async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
            await asyncio.sleep(timeout_s)  # the behaviour faked: a start that takes long

    async with serving(tmp_path, [Replica()], scaler=Slow) as h:
        host, port = h.url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n")
        writer.write(b"{}")
        pool = h.activator.pools["m"]
        await until(lambda: pool.queued == 1, "the request to queue")
        writer.close()
        await until(lambda: pool.queued == 0, "its place given up")
        await until(lambda: [e["status"] for e in h.events()] == [499], "the 499 recorded")


async def test_draining_says_connection_close_on_a_relayed_answer(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()]) as h:
        assert (await h.client.post("/v2/models/m/infer", content=BODY)).status_code == 200
        h.door.draining = True
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 200 and r.headers["connection"] == "close"
        assert r.json()["path"] == "/v2/models/m/infer"
        h.door.draining = False


async def test_the_activators_own_endpoints_share_the_route_table(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()]) as h:
        c = h.client
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        assert (await c.get("/v2")).json()["extensions"] == ["model_repository"]
        ready = await c.get("/v2/models/m/ready")  # at zero: the activator answers
        assert ready.json() == {"name": "m", "ready": True}
        assert ready.headers["ember-model-state"] == "zero"
        wrong = await c.get("/v2/repository/index")
        assert wrong.status_code == 405 and "use POST" in wrong.json()["error"]
        assert (await c.get("/v2/nothing")).status_code == 404
        index = (await c.post("/v2/repository/index")).json()
        assert index[0]["name"] == "m" and index[0]["state"] == "UNAVAILABLE"
        bad = await c.post("/admin/models/m/warm", json={"seconds": "x"})
        assert bad.status_code == 400 and "'seconds'" in bad.json()["error"]
        warm = await c.post("/admin/models/m/warm", json={"seconds": 60})
        assert warm.status_code == 200 and warm.json()["name"] == "m"
        await until(lambda: h.activator.pools["m"].state == "ready", "the warm replica")
        ready = await c.get("/v2/models/m/ready")  # now relayed to the replica
        assert ready.headers["x-replica"] == "yes"
        assert (await c.get("/metrics")).text.count("ember_activator_requests") > 0


async def test_a_head_request_is_relayed_and_the_next_one_still_answered(tmp_path: Path) -> None:
    replica = Replica()
    async with serving(tmp_path, [replica], min_replicas=1) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        head = await h.client.head("/v2/models/m")
        assert head.status_code == 200 and head.headers["x-replica"] == "yes"
        assert head.content == b""
        after = await h.client.get("/v2/models/m")  # the same client connection, answered
        assert after.status_code == 200 and after.json()["path"] == "/v2/models/m"
        assert [r[0] for r in replica.received] == [b"HEAD", b"GET"]
        assert [e["status"] for e in h.events()] == [200, 200]


class Raw:
    """A raw client connection, for what an HTTP library would not send or would hide."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.got = reader, writer, b""

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, h: Harness) -> AsyncIterator[Raw]:
        host, port = h.url.removeprefix("http://").split(":")
        raw = cls(*await asyncio.open_connection(host, int(port)))
        try:
            yield raw
        finally:
            raw.writer.close()
            with contextlib.suppress(ConnectionError):
                await raw.writer.wait_closed()

    async def read_until(self, condition: Callable[[bytes], bool], what: str) -> bytes:
        deadline = time.monotonic() + 5
        while not condition(self.got):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.got!r}"
            chunk = await asyncio.wait_for(self.reader.read(65536), 5)
            if not chunk:
                break
            self.got += chunk
        return self.got

    async def read_to_eof(self) -> bytes:
        return await self.read_until(lambda _: False, "EOF")


def request(method: str, path: str, body: bytes = b"", *extra: str) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "host: x", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_a_client_that_leaves_while_its_request_is_relayed_gives_the_slot_back(
    tmp_path: Path,
) -> None:
    hanging = Replica("hang")
    async with serving(tmp_path, [hanging], min_replicas=1) as h:
        pool = h.activator.pools["m"]
        await until(lambda: pool.state == "ready", "the replica")
        async with Raw.open(h) as raw:
            raw.writer.write(request("POST", "/v2/models/m/infer", b"{}"))
            await until(lambda: len(hanging.received) == 1, "the request to reach the replica")
            assert pool.in_flight == 1
            raw.writer.close()
            await until(lambda: pool.in_flight == 0, "the slot given back")
            await until(lambda: [e["status"] for e in h.events()] == [499], "the 499 recorded")


async def test_pipelined_head_and_get_are_both_answered_relayed_or_not(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()]) as h, Raw.open(h) as raw:
        # at zero, ready is the activator's own answer: a HEAD gets its head and no body
        raw.writer.write(request("HEAD", "/v2/models/m/ready") + request("GET", "/v2/health/live"))
        got = await raw.read_until(lambda b: b.count(b"HTTP/1.1 200") == 2, "two answers")
        assert got.count(b"HTTP/1.1 200") == 2 and b'{"name"' not in got
        assert got.endswith(b'{"live": true}')
        await h.client.post("/admin/models/m/warm", json={"seconds": 60})
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        raw.got = b""
        raw.writer.write(request("HEAD", "/v2/models/m") + request("GET", "/v2/models/m"))
        got = await raw.read_until(lambda b: b.endswith(b'"echo": 0}'), "the relayed GET")
        assert got.count(b"x-replica: yes") == 2 and got.count(b'"path"') == 1


async def test_a_bad_request_after_a_good_one_is_answered_after_it(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()], min_replicas=1) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            raw.writer.write(
                request("POST", "/v2/models/m/infer", b"{}") + b"NOT HTTP AT ALL\r\n\r\n"
            )
            got = await raw.read_to_eof()
            first, _, second = got.partition(b"HTTP/1.1 400")
            assert first.startswith(b"HTTP/1.1 200") and b"x-replica: yes" in first
            assert b"malformed HTTP request" in second and b"connection: close" in second


async def test_an_upgrade_is_declined_by_answering_over_http_1_1(tmp_path: Path) -> None:
    replica = Replica()
    async with serving(tmp_path, [replica], min_replicas=1) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            upgrade = (
                "connection: Upgrade, HTTP2-Settings",
                "upgrade: h2c",
                "http2-settings: AAMA",
            )
            # its body arrives apart from its head, the next request right behind it
            raw.writer.write(request("POST", "/v2/models/m/infer", b"{}", *upgrade)[:-1])
            await until(
                lambda: any(c._upgrading is not None for c in h.door.connections),
                "the head to be read",
            )
            raw.writer.write(b"}" + request("GET", "/v2/models/m"))
            got = await raw.read_until(lambda b: b.endswith(b'"echo": 0}'), "both answers")
            assert got.startswith(b"HTTP/1.1 200") and b'"echo": 2}' in got
            headers = dict(replica.received[0][2])
            assert b"upgrade" not in headers and b"http2-settings" in headers
            raw.writer.write(request("CONNECT", "example.com:443"))
            got = await raw.read_to_eof()
            assert b"HTTP/1.1 400" in got and b"CONNECT" in got


async def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, [Replica()], min_replicas=1) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            body = b'{"x": 1}'
            raw.writer.write(
                b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
                b"content-length: 8\r\n\r\n"
            )
            await raw.read_until(lambda b: b.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), "100")
            raw.writer.write(body)
            got = await raw.read_until(lambda b: b.endswith(b'"echo": 8}'), "the answer")
            assert b"HTTP/1.1 200" in got


async def test_a_replica_that_dies_mid_answer_gets_the_client_a_502_not_half_an_answer(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, [Replica("cut"), Replica()]) as h:
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 502, r.text
        assert "went away before it answered" in r.json()["error"]
        assert [e["status"] for e in h.events()] == [502]
        r = await h.client.post("/v2/models/m/infer", content=BODY)  # a new replica answers
        assert r.status_code == 200


async def test_a_connection_a_replica_answered_with_a_server_error_is_not_reused(
    tmp_path: Path,
) -> None:
    replica = Replica("error")  # each connection: a 500 first, then it drops what follows
    async with serving(tmp_path, [replica], min_replicas=1) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        first = await h.client.post("/v2/models/m/infer", content=BODY)
        assert first.status_code == 500
        async with httpx.AsyncClient(base_url=h.url) as other:  # another client, good requests
            for _ in range(3):
                r = await other.post("/v2/models/m/infer", content=BODY)
                assert r.status_code == 500, r.text  # the replica's own answer, never a 502
        assert [e["status"] for e in h.events()] == [500, 500, 500, 500]
