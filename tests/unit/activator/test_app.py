"""The activator's own answers for a model no replica serves: metadata and ready without waking
it, and the repository index saying ZERO (a request wakes it) apart from UNAVAILABLE (its last
start failed). Through the front door, with in-process replicas (tests/fixtures/frontdoor.py).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from activator.errors import ReplicaStartFailed, StartFailure
from activator.scalers.base import ReplicaHandle
from tests.fixtures.frontdoor import BODY, METADATA, Replica, Scaler, serving, until


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
