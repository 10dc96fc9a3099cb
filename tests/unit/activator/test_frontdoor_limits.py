"""The front door's bounds: what a request may make it hold, and for how long it may take.

A body declared too big is refused before it is read; the bodies held over all connections stay
under ``max_buffered_bytes`` (503 past it); bodies are let go with their answers or their
connection, without waiting for a garbage collection; a connection reads no further ahead than
the pipeline allows and stops reading (its replica too) while its client takes nothing; a client
that stops sending gets 408 (or, with nothing sent, a close).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from activator import connection
from activator.connection import FrontConnection
from tests.fixtures.frontdoor import (
    BIG,
    Harness,
    Raw,
    Replica,
    request,
    serving,
    until,
)


@pytest.fixture
def no_gc() -> Iterator[None]:
    """What is let go must go without a collection (the probe found bodies kept until one)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def the_connection(h: Harness) -> FrontConnection:
    (conn,) = h.door.connections
    return conn


def status_and_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


async def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, [Replica()], settings={"max_request_bytes": 1000}) as h:
        async with Raw.open(h) as raw:
            raw.writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 1001\r\n\r\n")
            answer = await raw.read_to_eof()  # no byte of the body was sent
        status, error = status_and_error(answer)
        assert status == 413 and "over 1000 bytes" in error
        assert h.door.buffered == 0
        assert h.activator.pools["m"].state == "zero"  # nothing was woken for it


async def test_a_chunked_body_over_the_limit_is_let_go_at_once(tmp_path: Path, no_gc: None) -> None:
    async with serving(tmp_path, [Replica()], settings={"max_request_bytes": 100_000}) as h:
        async with Raw.open(h) as raw:
            raw.writer.write(
                b"POST /v2/models/m/infer HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            raw.writer.write(b"%x\r\n%s\r\n" % (60_000, b"x" * 60_000))
            await until(lambda: h.door.buffered == 60_000, "the first chunk to be held")
            raw.writer.write(b"%x\r\n%s\r\n" % (60_000, b"y" * 60_000))
            answer = await raw.read_to_eof()
        assert status_and_error(answer)[0] == 413
        assert h.door.buffered == 0


async def test_bodies_are_let_go_with_their_connection(tmp_path: Path, no_gc: None) -> None:
    hanging = Replica("hang")
    async with serving(tmp_path, [hanging], min_replicas=1) as h:
        pool = h.activator.pools["m"]
        await until(lambda: pool.state == "ready", "the replica")
        async with Raw.open(h) as raw:
            big = b"x" * 300_000
            raw.writer.write(request("POST", "/v2/models/m/infer", big))  # relayed, never answered
            raw.writer.write(request("POST", "/v2/models/m/infer", big))  # read ahead, pending
            raw.writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 900000\r\n\r\n")
            raw.writer.write(big)  # and a third, half arrived
            await until(lambda: h.door.buffered == 900_000, "three bodies to be held")
            conn = the_connection(h)
        await until(lambda: not h.door.connections, "the connection to be gone")
        assert h.door.buffered == 0
        assert not conn.pending and conn._body == [] and conn._current is None
        assert conn.exchange is None


async def test_past_the_buffered_bytes_budget_a_request_is_refused_with_503(
    tmp_path: Path,
) -> None:
    hanging = Replica("hang")
    limits = {"max_buffered_bytes": 1000}
    async with serving(tmp_path, [hanging], min_replicas=1, settings=limits) as h:
        pool = h.activator.pools["m"]
        await until(lambda: pool.state == "ready", "the replica")
        async with Raw.open(h) as holder:
            holder.writer.write(request("POST", "/v2/models/m/infer", b"a" * 600))
            await until(lambda: len(hanging.received) == 1, "the first request to be relayed")
            async with Raw.open(h) as late:
                late.writer.write(request("POST", "/v2/models/m/infer", b"b" * 600))
                answer = await late.read_to_eof()
            status, error = status_and_error(answer)
            assert status == 503 and "600" in error and "1000" in error
            assert b"retry-after: 1" in answer.lower()
        await until(lambda: h.door.buffered == 0, "the held body to be let go")
        async with Raw.open(h) as again:  # room again: relayed (to a replica that never answers)
            again.writer.write(request("POST", "/v2/models/m/infer", b"c" * 600))
            await until(lambda: len(hanging.received) == 2, "the request to be relayed")


@pytest.fixture
def shallow_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "PIPELINE_BYTES", 64 * 1024)


async def test_a_connection_reads_only_so_far_ahead_of_its_answers(
    tmp_path: Path, shallow_pipeline: None
) -> None:
    hanging = Replica("hang")
    async with serving(tmp_path, [hanging], min_replicas=1) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            body = b"x" * 100_000
            for _ in range(60):  # 6 MB pipelined behind a request that is never answered
                raw.writer.write(request("POST", "/v2/models/m/infer", body))
            await until(lambda: len(hanging.received) == 1, "the first request to be relayed")
            conn = the_connection(h)
            await until(lambda: not conn.flow.reading, "reading to pause")
            # read ahead past 64 KiB, plus what the read that crossed it brought: the rest waits
            assert len(conn.pending) <= 3
            assert h.door.buffered < 600_000
            hanging.mode = "answer"


async def test_a_client_that_does_not_take_its_answer_pauses_its_replica(
    tmp_path: Path,
) -> None:
    big = Replica("big")
    async with serving(tmp_path, [big], min_replicas=1) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            raw.writer.write(request("GET", "/v2/models/m"))
            await raw.reader.readexactly(1)  # the answer started; now the client reads nothing
            conn = the_connection(h)
            await until(lambda: conn.flow.write_paused, "the client's side to fill up")
            assert conn.exchange is not None
            upstream = conn.exchange.upstream
            assert upstream is not None and not upstream.flow.reading
            assert conn.transport is not None
            buffered = conn.transport.get_write_buffer_size()
            assert buffered < BIG // 4  # the rest waits in the replica, not in the activator
            got = 1 + len(await raw.reader.readexactly(BIG // 2))  # reading again resumes it
            assert got > BIG // 2


def read_timeouts(tmp_path: Path) -> AbstractAsyncContextManager[Harness]:
    return serving(
        tmp_path,
        [Replica()],
        settings={"header_timeout_s": 0.3, "body_timeout_s": 0.3, "idle_timeout_s": 0.3},
    )


async def test_a_head_that_stops_arriving_gets_408(tmp_path: Path) -> None:
    async with read_timeouts(tmp_path) as h, Raw.open(h) as raw:
        raw.writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-le")
        answer = await raw.read_to_eof()
    status, error = status_and_error(answer)
    assert status == 408 and "head not received within 0.3 s" in error


async def test_a_body_that_stops_arriving_gets_408(tmp_path: Path) -> None:
    async with read_timeouts(tmp_path) as h, Raw.open(h) as raw:
        raw.writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 10\r\n\r\n{}")
        answer = await raw.read_to_eof()
        assert h.door.buffered == 0
    status, error = status_and_error(answer)
    assert status == 408 and "stalled for more than 0.3 s" in error


async def test_a_connection_that_sends_nothing_is_closed(tmp_path: Path) -> None:
    async with read_timeouts(tmp_path) as h:
        async with Raw.open(h) as silent:
            assert await silent.read_to_eof() == b""  # nothing asked: nothing answered
        async with Raw.open(h) as kept:
            kept.writer.write(request("GET", "/v2/health/live"))
            answer = await kept.read_to_eof()  # answered, then closed once idle
            assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1


async def test_a_body_refused_on_its_length_gets_no_100_continue(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()], settings={"max_request_bytes": 1000}) as h:
        async with Raw.open(h) as raw:
            raw.writer.write(
                b"POST /v2/models/m/infer HTTP/1.1\r\nexpect: 100-continue\r\n"
                b"content-length: 5000\r\n\r\n"
            )
            answer = await raw.read_to_eof()
        assert not answer.startswith(b"HTTP/1.1 100")  # the client must not start sending
        assert status_and_error(answer)[0] == 413


async def test_an_upgrade_requests_body_is_held_as_it_arrives_and_timed(tmp_path: Path) -> None:
    async with read_timeouts(tmp_path) as h, Raw.open(h) as raw:
        raw.writer.write(
            b"POST /v2/models/m/infer HTTP/1.1\r\nupgrade: h2c\r\nconnection: upgrade\r\n"
            b"content-length: 900000\r\n\r\n{}"
        )
        await until(lambda: h.door.buffered == 2, "the two bytes sent to be held, no more")
        answer = await raw.read_to_eof()  # and the rest never comes
        assert h.door.buffered == 0
    status, error = status_and_error(answer)
    assert status == 408 and "stalled for more than 0.3 s" in error


async def test_a_client_that_never_reads_is_cut_off_when_its_request_times_out(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, [Replica("big")], min_replicas=1, request_timeout_s=0.5) as h:
        await until(lambda: h.activator.pools["m"].state == "ready", "the replica")
        async with Raw.open(h) as raw:
            raw.writer.write(request("GET", "/v2/models/m"))
            await raw.reader.readexactly(1)  # the answer started; the client reads no more
            await until(lambda: not h.door.connections, "the connection to be dropped", 10)
        assert [e["status"] for e in h.events()] == [504]


async def test_the_ready_index_lists_a_model_at_zero_as_its_ready_says(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()]) as h:
        ready = await h.client.get("/v2/models/m/ready")
        index = await h.client.post("/v2/repository/index", json={"ready": True})
        assert ready.status_code == 200 and [m["name"] for m in index.json()] == ["m"]
        assert h.activator.pools["m"].state == "zero"  # neither woke it
