"""Startup, readiness, failed loads, repository load/unload, size limits and the SIGTERM drain."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import slow_model
from tests.integration.test_activator import wait_until
from tests.servers import ServerProcess, running_server, wait_for_state

BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [3.0]}]})


def infer(server: ServerProcess, timeout: float = 30) -> httpx.Response:
    return httpx.post(server.url + "/v2/models/slow/infer", content=BODY, timeout=timeout)


def queue_depth(server: ServerProcess) -> float:
    """The runtime's queue depth for the model, from its /metrics."""
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith('ember_queue_depth{model="slow"} '):
            return float(line.split()[-1])
    raise AssertionError(f"no queue depth in /metrics:\n{server.output}")


def test_live_at_once_ready_only_when_loaded(tmp_path: Path) -> None:
    with running_server(slow_model(tmp_path, load_delay_s=3), ready=False) as server:
        server.wait_ready(path="/v2/health/live", timeout_s=30)
        started = time.monotonic()
        ready = httpx.get(server.url + "/v2/health/ready")
        assert ready.status_code == 503 and "error" in ready.json()
        early = infer(server)
        assert early.status_code == 503 and early.headers["Retry-After"] == "1"
        assert "loading" in early.json()["error"]
        assert httpx.get(server.url + "/v2/models/slow/ready").status_code == 503
        # while loading, the event loop keeps answering quickly
        for _ in range(10):
            t = time.monotonic()
            assert httpx.get(server.url + "/v2/health/live").status_code == 200
            assert time.monotonic() - t < 0.5
        server.wait_ready(timeout_s=60)
        assert time.monotonic() - started > 1.0
        r = infer(server)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [6.0]


def test_sigterm_finishes_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    server = ServerProcess(slow_model(tmp_path, delay_s=0.7, instance_count=1))
    try:
        server.wait_ready()
        results: list[httpx.Response | Exception] = []

        def call() -> None:
            try:
                results.append(infer(server))
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        # all three are in: one computing (0.7 s: the fixture's sleep), two queued
        wait_until(lambda: queue_depth(server) == 2, 30, "two queued requests")
        code = server.terminate(timeout_s=30)
        for t in threads:
            t.join(30)
        assert code == 0, server.output
        assert [r.status_code for r in results if isinstance(r, httpx.Response)] == [200] * 3, (
            results
        )
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/v2/health/live", timeout=2)
    finally:
        server.terminate()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b"\x00" * 3), "cannot read weights"),
        (lambda p: p.write_bytes(p.read_bytes()[:-2]), "cannot read weights"),
        (lambda p: p.write_bytes(b"\xff" * 8 + b"{}"), "cannot read weights"),
        (lambda p: save_file({"other": torch.ones(1)}, str(p)), "weights do not fit"),
        (lambda p: p.unlink(), "does not exist"),
    ],
    ids=["tiny", "truncated", "bad-header", "wrong-tensors", "missing"],
)
def test_bad_weights_leave_the_model_unavailable_with_the_reason(
    tmp_path: Path, damage: Any, message: str
) -> None:
    config = slow_model(tmp_path)
    weights = tmp_path / "weights" / "model.safetensors"
    damage(weights)
    with running_server(config, "--stay-on-load-failure", ready=False) as server:
        entry = wait_for_state(server, "UNAVAILABLE")
        assert message in entry["reason"], entry
        assert httpx.get(server.url + "/v2/health/ready").status_code == 503
        r = infer(server)
        assert r.status_code == 503 and message in r.json()["error"]
        # a repository load retries, fails the same way, and says why
        r = httpx.post(server.url + "/v2/repository/models/slow/load", timeout=30)
        assert r.status_code == 503 and message in r.json()["error"]
        # repair the file: the next load succeeds without a restart
        save_file({"scale": torch.full((1,), 2.0)}, str(weights))
        r = httpx.post(server.url + "/v2/repository/models/slow/load", timeout=30)
        assert r.status_code == 200, r.text
        assert infer(server).json()["outputs"][0]["data"] == [6.0]


def test_repository_unload_and_load(tmp_path: Path) -> None:
    with running_server(slow_model(tmp_path)) as server:
        url = server.url
        assert httpx.post(url + "/v2/repository/models/slow/unload").status_code == 200
        assert infer(server).status_code == 503
        assert httpx.get(url + "/v2/models/slow/ready").status_code == 503
        index = httpx.post(url + "/v2/repository/index").json()
        assert index == [
            {"name": "slow", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
        ]
        assert httpx.post(url + "/v2/repository/index", content=b'{"ready": true}').json() == []
        bad = httpx.post(url + "/v2/repository/index", content=b'{"ready": "yes"}')
        assert bad.status_code == 400
        assert httpx.post(url + "/v2/repository/models/nope/load").status_code == 404
        assert httpx.post(url + "/v2/repository/models/slow/load").status_code == 200
        assert infer(server).status_code == 200


def test_oversize_bodies_get_413(tmp_path: Path) -> None:
    import gzip

    with running_server(slow_model(tmp_path), "--max-request-bytes", "2000") as server:
        url = server.url + "/v2/models/slow/infer"
        assert httpx.post(url, content=BODY).status_code == 200
        r = httpx.post(url, content=b" " * 5000 + BODY.encode())
        assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]

        def chunks() -> Any:
            for _ in range(10):
                yield b" " * 500

        r = httpx.post(url, content=chunks())  # no Content-Length: counted while streaming
        assert r.status_code == 413
        bomb = gzip.compress(b" " * 100_000 + BODY.encode())
        r = httpx.post(url, content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and "decompressed" in r.json()["error"]


def test_bad_config_exits_2_with_the_reason(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "m.yaml"
    path.write_text("name: m\nhandler: torch-module\nmax_batch_szie: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ember", "serve", "--config", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "max_batch_szie: unknown key; did you mean 'max_batch_size'?" in proc.stderr
