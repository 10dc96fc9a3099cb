"""The data path in one process: the front door, the activator and in-process replicas.

The harness (tests/fixtures/frontdoor.py) runs replicas as small asyncio HTTP/1.1 servers in
the test's own loop, with the behaviour each test picks; no subprocess, no torch. What is
checked: a request is relayed unchanged, a request that never reached a replica is tried on
another one, one that did is not, every request is recorded once with its status, the queue's
and the data path's errors come in the OIP shape from the one renderer, and nothing holds a slot
afterwards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from activator.scalers.base import ReplicaHandle
from tests.fixtures.frontdoor import (
    BODY,
    Harness,
    Raw,
    Replica,
    Scaler,
    request,
    serving,
    until,
)


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
        assert len(h.door.deadlines) == 0  # each relay took its deadline with it
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


async def test_a_replica_that_holds_a_request_too_long_is_a_504(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica("hang")], request_timeout_s=0.2) as h:
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 504 and "did not answer within 0.2s" in r.json()["error"]
        assert [e["status"] for e in h.events()] == [504]
        await until(lambda: h.activator.pools["m"].in_flight == 0, "the slot given back")
        assert len(h.door.deadlines) == 0  # ended once: its deadline went with it


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
        assert missing.status_code == 404 and "is not in the repository" in missing.json()["error"]
        # refused before any replica: counted by reason, not logged
        assert h.events() == []
        refused = h.activator.metrics.registry.get_sample_value
        for model, reason in (("m", "queue_full"), ("m", "bad_request"), ("", "unknown_model")):
            labels = {"model": model, "reason": reason}
            assert refused("ember_activator_refused_total", labels) == 1, reason


async def test_a_client_that_leaves_the_queue_is_recorded_and_frees_its_place(
    tmp_path: Path,
) -> None:
    class Slow(Scaler):
        async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
            await asyncio.sleep(timeout_s)  # the behaviour faked: a start that takes long

    async with serving(tmp_path, [Replica()], scaler=Slow) as h:
        host, port = h.url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        head = f"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {len(BODY)}\r\n"
        writer.write(head.encode() + b"\r\n" + BODY.encode())
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
        assert index[0]["name"] == "m" and index[0]["state"] == "ZERO"
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


async def test_a_replica_start_carries_what_the_cost_report_prices_it_by(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()], price_per_hour=0.09, cpus=2.0, gpu_type=None) as h:
        assert (await h.client.post("/v2/models/m/infer", content=BODY)).status_code == 200
        (start,) = h.events("replica_starting")
        assert (start["price_per_hour"], start["cpus"], start["gpu_type"]) == (0.09, 2.0, None)


def refused(h: Harness, model: str, reason: str) -> float:
    value = h.activator.metrics.registry.get_sample_value(
        "ember_activator_refused_total", {"model": model, "reason": reason}
    )
    return value or 0.0


async def test_a_request_is_logged_by_its_route_never_its_target_or_query(
    tmp_path: Path,
) -> None:
    replica = Replica()
    query = "?q=" + "x" * 60_000
    async with serving(tmp_path, [replica], version="3") as h:
        for path in ("/v2/models/m/infer", "/v2/models/m/versions/3/infer", "/v2/models/m"):
            if "infer" in path:
                r = await h.client.post(path + query, content=BODY)
            else:
                r = await h.client.get(path + query)
            assert r.status_code == 200, r.text
        # the replica still gets the whole target
        assert replica.received[0][1] == f"/v2/models/m/infer{query}".encode()
        routes = [(e["endpoint"], e["version"]) for e in h.events()]
        assert routes == [("infer", ""), ("infer", "3"), ("metadata", "")]
        assert "x" * 100 not in h.events_path.read_text()
        # one route kept per path, however many queries: the door holds no query
        for i in range(20):
            await h.client.post(f"/v2/models/m/infer?n={i}", content=BODY)
        assert len(h.door._routes) == 3


async def test_a_version_the_model_has_not_is_refused_without_waking_it(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()]) as h:
        r = await h.client.post("/v2/models/m/versions/9/infer", content=BODY)
        assert r.status_code == 404 and "version '9' is not in the repository" in r.text
        scaler = h.activator.scaler
        assert isinstance(scaler, Scaler) and scaler.started == 0
        assert h.events() == [] and refused(h, "m", "unknown_model") == 1


async def test_a_request_without_its_token_is_refused_and_counted_not_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBER_TEST_API_TOKEN", "api-token-0123456789abcdef")
    settings = {"api_token_env": "EMBER_TEST_API_TOKEN"}
    async with serving(tmp_path, [Replica()], settings=settings) as h:
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert (await h.client.get("/v2/models/m/ready")).status_code == 401  # the app's
        assert (await h.client.get("/v2/models/nope/ready")).status_code == 401
        assert h.events() == []
        assert refused(h, "m", "unauthorized") == 2 and refused(h, "", "unauthorized") == 1
        headers = {"authorization": "Bearer api-token-0123456789abcdef"}
        ok = await h.client.post("/v2/models/m/infer", content=BODY, headers=headers)
        assert ok.status_code == 200 and [e["status"] for e in h.events()] == [200]


async def test_a_request_that_waited_and_timed_out_is_a_request(tmp_path: Path) -> None:
    class Slow(Scaler):
        async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
            await asyncio.sleep(timeout_s)  # the behaviour faked: a start that takes long

    async with serving(tmp_path, [Replica()], scaler=Slow) as h:
        headers = {"Ember-Deadline-Ms": "50"}
        r = await h.client.post("/v2/models/m/infer", content=BODY, headers=headers)
        assert r.status_code == 504
        (event,) = h.events()
        assert (event["status"], event["start"], event["endpoint"]) == (504, None, "infer")
        assert refused(h, "m", "deadline") == 0


async def test_malformed_and_oversized_requests_are_counted_as_refusals(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()], settings={"max_request_bytes": 100}) as h:
        async with Raw.open(h) as raw:
            raw.writer.write(request("POST", "/v2/models/m/infer", b"x" * 200))
            assert b" 413 " in await raw.read_to_eof()
        async with Raw.open(h) as raw:
            raw.writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            assert b" 400 " in await raw.read_to_eof()
        assert refused(h, "", "too_large") == 1 and refused(h, "", "bad_request") == 1
        assert h.events() == []
