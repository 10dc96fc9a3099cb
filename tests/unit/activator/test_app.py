"""The activator's own answers for a model no replica serves: metadata and ready without waking
it, and the repository index saying ZERO (a request wakes it) apart from UNAVAILABLE (its last
start failed). Through the front door, with in-process replicas (tests/fixtures/frontdoor.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from activator.app import Activator
from activator.errors import (
    BadRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    ReplicaStartFailed,
    StartFailure,
)
from activator.http import Request, Response
from activator.routes import target
from activator.scalers.base import ReplicaHandle
from contracts.stack import ActivatorSettings, StackConfig
from tests.fixtures.frontdoor import BODY, METADATA, Replica, Scaler, serving, spec_of, until


async def test_metadata_and_ready_at_zero_wake_nothing_and_an_infer_still_does(
    tmp_path: Path,
) -> None:
    replica = Replica()
    async with serving(tmp_path, [replica]) as h:
        c, scaler = h.client, h.activator.scaler
        for path in ("/v2/models/m", "/v2/models/m/versions/1"):
            r = await c.get(path)
            assert r.status_code == 200 and r.json() == METADATA.as_json()
            assert r.headers["ember-model-state"] == "zero" and "x-replica" not in r.headers
        head = await c.head("/v2/models/m")
        assert head.status_code == 200 and head.content == b""
        assert (await c.get("/v2/models/m/ready")).json() == {"name": "m", "ready": True}
        wrong = await c.get("/v2/models/m/versions/2")
        assert wrong.status_code == 404 and "version '2'" in wrong.json()["error"]
        assert isinstance(scaler, Scaler) and scaler.started == 0
        assert h.events() == [] and h.events("replica_starting") == []
        infer = await c.post("/v2/models/m/infer", content=BODY)
        assert infer.status_code == 200 and scaler.started == 1
        relayed = await c.get("/v2/models/m")  # a replica is ready: it answers
        assert relayed.headers["x-replica"] == "yes"
        assert [r[1] for r in replica.received] == [b"/v2/models/m/infer", b"/v2/models/m"]


async def test_metadata_while_a_replica_starts_is_the_activators_answer(tmp_path: Path) -> None:
    gate = asyncio.Event()

    class Gated(Scaler):
        async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
            await gate.wait()

    async with serving(tmp_path, [Replica()], scaler=Gated) as h:
        infer = asyncio.create_task(h.client.post("/v2/models/m/infer", content=BODY))
        pool = h.activator.pools["m"]
        await until(lambda: pool.state == "starting", "the start")
        r = await h.client.get("/v2/models/m")
        assert r.json() == METADATA.as_json() and r.headers["ember-model-state"] == "starting"
        gate.set()
        assert (await infer).status_code == 200


async def test_undeclared_metadata_wakes_the_model_once_then_is_answered_at_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answer = {**METADATA.as_json(), "properties": {"max_length": "256"}}
    replica = Replica(metadata=answer)
    with caplog.at_level(logging.INFO, "ember.activator"):
        async with serving(tmp_path, [replica], metadata=None) as h:
            await until(lambda: "GET /v2/models/m wakes it" in caplog.text, "the start's word")
            pool, book = h.activator.pools["m"], h.activator.metadata
            first = await h.client.get("/v2/models/m")  # not known yet: relayed, it wakes
            assert first.headers["x-replica"] == "yes" and first.json() == answer
            await until(lambda: book.knows("m"), "the metadata learned from the replica")
            await h.client.post("/admin/models/m/sleep")
            await until(lambda: pool.state == "zero", "back at zero")
            r = await h.client.get("/v2/models/m")
            assert r.json() == answer and "x-replica" not in r.headers
            assert h.activator.scaler.started == 1  # type: ignore[attr-defined]
            assert [e["status"] for e in h.events()] == [200]  # only the relayed one


async def test_the_index_says_zero_and_unavailable_only_after_a_failed_start(
    tmp_path: Path,
) -> None:
    class Failing(Scaler):
        async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
            raise ReplicaStartFailed("its replica cannot load it: no weights", StartFailure.EXITED)

    async with serving(tmp_path, [Replica()], scaler=Failing) as h:
        (entry,) = (await h.client.post("/v2/repository/index")).json()
        assert entry["state"] == "ZERO" and entry["reason"] == "scaled to zero: a request wakes it"
        failed = await h.client.post("/v2/models/m/infer", content=BODY)
        assert failed.status_code == 503
        pool = h.activator.pools["m"]
        await until(lambda: pool.state == "zero", "back at zero")
        (entry,) = (await h.client.post("/v2/repository/index")).json()
        assert entry["state"] == "UNAVAILABLE" and "no weights" in entry["reason"]


def request_line(arrival: float, model: str = "m") -> str:
    return json.dumps(
        {
            "event": "request",
            "model": model,
            "ts": arrival + 0.1,
            "mono": 1.0,
            "endpoint": "infer",
            "version": "",
            "arrival": arrival,
            "start": arrival,
            "end": arrival + 0.1,
            "status": 200,
            "cold": False,
            "queue_s": 0.0,
            "replica": 1,
        }
    )


async def test_the_start_learns_from_rotated_files_and_skips_bad_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "events.jsonl"
    (tmp_path / "events.jsonl.2").write_text(f"{request_line(100.0)}\n{request_line(200.0)}\n")
    (tmp_path / "events.jsonl.1").write_text(
        f"{request_line(300.0)}\n"
        '{"event":"request","model":"m","ts":"yesterday"}\n'  # once, this stopped the start
        '{"event":"request","model":["m"],"ts":1}\n'
        f"{request_line(400.0, model='gone')}\n"  # a model no longer configured: not learned
    )
    log.write_text(f"{request_line(500.0)}\n" + '{"event":"request","mod')  # torn by a crash
    with caplog.at_level(logging.INFO, "ember.activator"):
        async with serving(tmp_path, [Replica()]) as h:
            name = "ember_activator_event_log_skipped_lines_total"
            skipped = h.activator.metrics.registry.get_sample_value
            await until(lambda: skipped(name) == 3, "the skipped lines counted at start")
            r = await h.client.post("/v2/models/m/infer", content=BODY)
            assert r.status_code == 200
            *before, event = h.events()  # after the torn line, not swallowed by it
            assert [e["arrival"] for e in before] == [100.0, 200.0, 300.0, 400.0, 500.0]
            assert event["status"] == 200 and event["arrival"] > 500
    assert "policies learned from" in caplog.text and "{'m': 4}" in caplog.text
    assert "skipped 3 line(s)" in caplog.text


async def test_the_start_reads_a_long_log_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    events = tmp_path / "events.jsonl"
    with events.open("w") as f:  # about 7 MB: read whole, tens of MB of dicts
        for i in range(30_000):
            f.write(request_line(float(i)) + "\n")
    settings = ActivatorSettings(events=events)
    stack = StackConfig(path=tmp_path / "ember.yaml", settings=settings, models={"m": spec_of()})
    activator = Activator(stack, Scaler([]))
    tracemalloc.start()
    try:
        activator._learn_from_log()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        activator.events.close()
    assert peak < 4 * 1024 * 1024, f"{peak / 1e6:.1f} MB held to read the history"


async def test_a_cold_start_out_of_descriptors_is_a_retryable_503_that_says_so(
    tmp_path: Path,
) -> None:
    import errno

    from activator.scalers.process import OutOfDescriptors
    from contracts.stack import ModelSpec

    class NoDescriptors(Scaler):
        async def start(self, spec: ModelSpec) -> ReplicaHandle:
            raise OutOfDescriptors(errno.EMFILE)

    async with serving(tmp_path, [Replica()], scaler=NoDescriptors) as h:
        r = await h.client.post("/v2/models/m/infer", content=BODY)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "out of file descriptors (EMFILE) starting a replica" in r.json()["error"]
        (failed,) = h.events("replica_failed")
        assert failed["kind"] == "platform"
        (request,) = h.events()  # it waited for that start: a request, logged
        assert (request["status"], request["endpoint"]) == (503, "infer")


async def test_a_failed_command_is_no_refusal_a_bad_one_is(tmp_path: Path) -> None:
    class Failing(Scaler):
        async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
            raise ReplicaStartFailed("its replica cannot load it: no weights", StartFailure.EXITED)

    async with serving(tmp_path, [Replica()], scaler=Failing) as h:
        load = await h.client.post("/v2/repository/models/m/load")
        assert load.status_code == 504 and "no weights" in load.json()["error"]
        bad = await h.client.post("/v2/repository/models/m/unload", content=b"{nope")
        assert bad.status_code == 400
        text = (await h.client.get("/metrics")).text
        refused = [line for line in text.splitlines() if line.startswith("ember_activator_refused")]
        assert [line.split("{")[1].split("}")[0] for line in refused if "_total" in line] == [
            'model="",reason="bad_request"'  # a repository path names no model route
        ]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("unload", b'{"level": "host"}', "unknown key 'level'"),
        ("unload?level=host", b"", "query parameters are not read ('level')"),
        ("load", b'{"parameters": {"config": "{}"}}', "unknown parameter 'config'"),
        ("load?wait=1", b"", "query parameters are not read"),
    ],
)
async def test_a_misplaced_repository_parameter_is_a_400_that_starts_and_stops_nothing(
    tmp_path: Path, path: str, body: bytes, message: str
) -> None:
    async with serving(tmp_path, [Replica()]) as h:
        scaler = h.activator.scaler
        assert isinstance(scaler, Scaler)
        assert (await h.client.post("/v2/models/m/infer", content=BODY)).status_code == 200
        r = await h.client.post(f"/v2/repository/models/m/{path}", content=body)
        assert r.status_code == 400 and message in r.json()["error"]
        assert h.activator.pools["m"].state == "ready" and scaler.started == 1
        index = await h.client.post("/v2/repository/index?ready=true")
        assert index.status_code == 400


def _infer(inputs: list[dict[str, Any]]) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


X = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b'{"inputs":[', {}, "request body is not valid JSON"),
        (b"[1, 2]", {}, "request body must be a JSON object, got list"),
        (b'{"inputs": []}', {}, "invalid inference request: inputs: List should have at least"),
        (_infer([{**X, "name": "z"}]), {}, "model 'm' has no input 'z'; expected ['x']"),
        (_infer([{**X, "datatype": "INT8"}]), {}, "input 'x': datatype INT8, model expects FP32"),
        (_infer([{**X, "datatype": "FLOAT"}]), {}, "input 'x': unknown datatype 'FLOAT'"),
        (_infer([{**X, "shape": [9]}]), {}, "input 'x': batch size 9 is outside 1..8"),
        (_infer([{**X, "shape": [1, 3]}]), {}, "input 'x': shape [1, 3], model expects [-1]"),
        (_infer([X, X]), {}, "input 'x' is given more than once"),
        (
            b'{"inputs": [{"name": "x"}]}xxxx',
            {"Inference-Header-Content-Length": "27"},
            "invalid inference request: inputs.0.shape: Field required",
        ),
    ],
)
async def test_a_request_its_replica_would_refuse_is_answered_400_at_zero_and_wakes_nothing(
    tmp_path: Path, body: bytes, headers: dict[str, str], message: str
) -> None:
    async with serving(tmp_path, [Replica()]) as h:
        scaler = h.activator.scaler
        assert isinstance(scaler, Scaler)
        r = await h.client.post("/v2/models/m/infer", content=body, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json() == {"error": r.json()["error"]} and message in r.json()["error"]
        assert scaler.started == 0 and h.activator.pools["m"].state == "zero"
        assert h.events("replica_starting") == []


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (_infer([X]), {}),  # a good one
        (b"\x1f\x8b compressed", {"Content-Encoding": "gzip"}),  # left to the replica
        (b"\0\0\0\0", {"Inference-Header-Content-Length": "0"}),  # raw tensor data
    ],
)
async def test_what_the_activator_does_not_refuse_wakes_the_model(
    tmp_path: Path, body: bytes, headers: dict[str, str]
) -> None:
    async with serving(tmp_path, [Replica()]) as h:
        scaler = h.activator.scaler
        assert isinstance(scaler, Scaler)
        r = await h.client.post("/v2/models/m/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text  # the harness's replica answers anything
        assert scaler.started == 1


async def test_a_model_that_declares_nothing_has_its_bodys_form_checked_only(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, [Replica()], metadata=None) as h:
        scaler = h.activator.scaler
        assert isinstance(scaler, Scaler)
        bad = await h.client.post("/v2/models/m/infer", content=b'{"inputs":[')
        assert bad.status_code == 400 and scaler.started == 0
        other = await h.client.post("/v2/models/m/infer", content=_infer([{**X, "name": "z"}]))
        assert other.status_code == 200 and scaler.started == 1  # its inputs are not known


async def test_a_ready_model_relays_requests_unread(tmp_path: Path) -> None:
    replica = Replica()
    async with serving(tmp_path, [replica]) as h:
        assert (await h.client.post("/v2/models/m/infer", content=BODY)).status_code == 200
        r = await h.client.post("/v2/models/m/infer", content=b'{"inputs":[')
        assert r.status_code == 200  # the harness's replica answered it: it was not read here
        assert replica.received[-1][1] == b"/v2/models/m/infer"


async def test_the_activators_repository_answers_are_the_predictors(tmp_path: Path) -> None:
    async with serving(tmp_path, [Replica()]) as h:
        for path in ("nope/unload", "nope/unload?level=host", "nope/load?x=1"):
            unknown = await h.client.post(f"/v2/repository/models/{path}", content=b"{nope")
            assert unknown.status_code == 404, path  # the model first, as the predictor does
            assert unknown.json() == {"error": "model 'nope' is not in the repository"}
        loaded = await h.client.post("/v2/repository/models/m/load")
        assert loaded.json() == {"name": "m", "loaded": True}
        unloaded = await h.client.post("/v2/repository/models/m/unload")
        assert unloaded.json() == {"name": "m", "unloaded": True}


async def test_the_activator_answers_a_parsed_request_directly(tmp_path: Path) -> None:
    """No server, no ASGI: the request as the front door parses it in, the answer out (and its
    errors raised, for the front door to render)."""
    settings = ActivatorSettings(events=None)
    stack = StackConfig(path=tmp_path / "ember.yaml", settings=settings, models={"m": spec_of()})
    activator = Activator(stack, Scaler([]))

    async def answer(method: bytes, url: bytes, body: bytes = b"") -> Response:
        request = Request(method, url, [], body, True, False, time.time())
        return await activator.answer(request, target(request.url))

    live = await answer(b"GET", b"/v2/health/live")
    assert (live.status, json.loads(live.body)) == (200, {"live": True})
    assert (b"content-type", b"application/json") in live.headers
    ready = await answer(b"GET", b"/v2/models/m/ready")  # at zero: the activator's to say
    assert json.loads(ready.body) == {"name": "m", "ready": True}
    with pytest.raises(MethodNotAllowed, match="use POST"):
        await answer(b"PUT", b"/v2/repository/index")
    with pytest.raises(BadRequest, match="'ready'"):
        await answer(b"POST", b"/v2/repository/index?ready=true")
    with pytest.raises(PayloadTooLarge):
        await answer(b"POST", b"/admin/models/m/warm", b"x" * ((1 << 20) + 1))
