"""Hostile input from outside: what an adversarial probe sent to `ember serve` and `ember up`.

Each request here once broke one of them (a 500, an answer that was not the protocol's shape, a
hang, memory kept, a redirect leaking a replica's address, another client's request lost). Both
servers must answer each one the same way, with an OIP-shaped error where it is an error; and the
activator's memory must stay bounded whatever bodies it is sent. Loopback only, bounded in count
and time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
import yaml

from contracts.proc import rss_bytes
from tests.conftest import MLP_CONFIG
from tests.fixtures.hostile import (
    MIB,
    VALID,
    answer,
    cases,
    over_limit,
    pipeline_unread,
    request,
    send,
)
from tests.servers import ServerProcess

TIMEOUT_S = 1.0  # both servers' header and body timeouts here


@pytest.fixture(scope="module")
def runtime() -> Iterator[ServerProcess]:
    timeouts = ("--header-timeout", str(TIMEOUT_S), "--body-timeout", str(TIMEOUT_S))
    server = ServerProcess(MLP_CONFIG, *timeouts)
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def activator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("hostile-stack")
    config = tmp / "ember.yaml"
    settings = {
        "events": str(tmp / "events.jsonl"),
        "keep_alive_s": 600,
        "header_timeout_s": TIMEOUT_S,
        "body_timeout_s": TIMEOUT_S,
    }
    config.write_text(
        yaml.safe_dump({"activator": settings, "models": [{"config": str(MLP_CONFIG)}]})
    )
    server = ServerProcess(config, command="up")
    try:
        server.wait_ready(timeout_s=60)
        r = httpx.post(server.url + "/v2/models/mlp/infer", content=VALID, timeout=60)
        assert r.status_code == 200, r.text  # warm: a replica answers from here on
        yield server
    finally:
        server.terminate()


CASES = cases()


@pytest.mark.parametrize(("what", "raw", "status"), CASES, ids=[c[0] for c in CASES])
def test_both_servers_answer_hostile_requests_alike(
    runtime: ServerProcess, activator: ServerProcess, what: str, raw: bytes, status: int
) -> None:
    for server in (runtime, activator):
        got, headers, body = answer(send(server.url, raw))
        where = f"{what}: {server.url}"
        assert got == status, f"{where}: {got} {body}"
        assert headers["content-type"].startswith("application/json"), where
        assert isinstance(body["error"], str) and body["error"], where
        assert "location" not in headers, where


def test_both_servers_answer_the_v2_routes_they_share_alike(
    runtime: ServerProcess, activator: ServerProcess
) -> None:
    for server in (runtime, activator):
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/v2/models/mlp/infer", content=VALID).status_code == 200
            ready = client.post("/v2/repository/index", json={"ready": True})
            assert ready.status_code == 200
            assert [m["name"] for m in ready.json()] == ["mlp"]
            stats = client.get("/v2/models/stats")
            assert stats.status_code == 200
            (model,) = stats.json()["model_stats"]
            assert model["name"] == "mlp" and model["inference_stats"]["success"]["count"] >= 1
            one = client.get("/v2/models/mlp/stats").json()["model_stats"]
            assert [m["name"] for m in one] == ["mlp"]
            body = {**json.loads(VALID), "outputs": []}
            r = client.post("/v2/models/mlp/infer", json=body)
            assert r.status_code == 200, r.text
            (out,) = r.json()["outputs"]  # every output, as JSON: none was asked in binary
            assert out["name"] == "logits" and len(out["data"]) == 10


@pytest.mark.parametrize("part", ["head", "body"])
def test_both_servers_answer_a_stalled_request_with_408(
    runtime: ServerProcess, activator: ServerProcess, part: str
) -> None:
    stalled = (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-le"
        if part == "head"
        else b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{}"
    )
    for server in (runtime, activator):
        status, _, body = answer(send(server.url, stalled, timeout_s=10 * TIMEOUT_S))
        assert status == 408, (server.url, body)


def test_both_servers_close_a_connection_that_sends_nothing(
    runtime: ServerProcess, activator: ServerProcess
) -> None:
    for server in (runtime, activator):
        assert send(server.url, b"", timeout_s=10 * TIMEOUT_S) == b""


LIMIT = 64 * MIB  # the activator's max_request_bytes, and the RSS headroom allowed


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_bodies_over_the_limit_leave_the_activators_memory_where_it_was(
    activator: ServerProcess, chunked: bool
) -> None:
    pid = activator.proc.pid
    before = rss_bytes(pid)
    path = "/v2/models/mlp/infer"
    statuses = [over_limit(activator.url, path, LIMIT, chunked=chunked) for _ in range(15)]
    assert set(statuses) <= {413, 0}, statuses  # 0: the close came before the answer was read
    assert statuses.count(413) >= 10, statuses
    after = rss_bytes(pid)  # no garbage collection asked for, none waited for
    print(f"activator RSS {before / MIB:.0f} -> {after / MIB:.0f} MiB after 15 bodies")
    assert after - before < LIMIT, f"RSS {before / MIB:.0f} -> {after / MIB:.0f} MiB"
    assert httpx.post(activator.url + "/v2/models/mlp/infer", content=VALID).status_code == 200


def test_pipelined_requests_nobody_reads_do_not_pile_up_in_the_activator(
    activator: ServerProcess,
) -> None:
    """60 pipelined 4 MiB requests to a model at zero, answers never read: the activator reads
    only so far ahead of its answers (it grew by all 240 MiB before)."""
    admin = httpx.post(activator.url + "/admin/models/mlp/sleep", timeout=30)
    assert admin.status_code == 200 and admin.json()["state"] in ("draining", "zero")
    pid = activator.proc.pid
    before = rss_bytes(pid)
    peaks = [before]
    done = threading.Event()

    def sample() -> None:  # the activator's memory while the requests go in
        while not done.wait(0.02):
            peaks.append(rss_bytes(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        sent = pipeline_unread(
            activator.url, "/v2/models/mlp/infer", count=60, size=4 * MIB, seconds=10
        )
    finally:
        done.set()
        sampler.join()
    peak = max(peaks)
    assert sent > 4 * MIB  # it did take requests
    print(f"activator RSS {before / MIB:.0f} -> peak {peak / MIB:.0f} MiB, {sent / MIB:.0f} sent")
    assert peak - before < LIMIT, f"RSS {before / MIB:.0f} -> {peak / MIB:.0f} MiB"
    assert httpx.post(activator.url + "/v2/models/mlp/infer", content=VALID).status_code == 200


def test_a_request_the_replica_refuses_does_not_cost_another_client_its_answer(
    activator: ServerProcess,
) -> None:
    refused = request(
        "POST", "/v2/models/mlp/infer", VALID, "Inference-Header-Content-Length: \xb2"
    )
    statuses: list[int] = []
    errors: list[BaseException] = []

    def valid_client() -> None:
        try:
            with httpx.Client(base_url=activator.url, timeout=30) as client:  # kept alive
                for _ in range(40):
                    statuses.append(client.post("/v2/models/mlp/infer", content=VALID).status_code)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=valid_client)
    worker.start()
    refusals = [answer(send(activator.url, refused))[0] for _ in range(40)]
    worker.join(60)
    assert not worker.is_alive() and not errors, errors
    assert set(refusals) == {400}
    assert statuses == [200] * 40
