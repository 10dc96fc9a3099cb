"""A real ``ember serve`` of examples/mlp put to sleep over HTTP: it still answers, the same."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import MLP_CONFIG
from tests.integration.test_mlp_server import infer_body, reference
from tests.servers import ServerProcess, running_server


@pytest.fixture(scope="module")
def server(mlp_weights: None) -> Iterator[ServerProcess]:
    with running_server(MLP_CONFIG) as server:  # its own: sleeping it must not touch the others
        yield server


def _logits(client: httpx.Client) -> np.ndarray:
    r = client.post("/v2/models/mlp/infer", json=infer_body(rows=2))
    assert r.status_code == 200, r.text
    return np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 10)


@pytest.mark.parametrize("level", ["disk", "host"])
def test_sleep_index_infer_and_load(server: ServerProcess, level: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        before = _logits(client)
        x = np.array(infer_body(rows=2)["inputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(before, reference(x), rtol=1e-4, atol=1e-5)
        body = {"parameters": {"level": level}}
        r = client.post("/v2/repository/models/mlp/unload", json=body)
        assert r.status_code == 200 and r.json()["level"] == level
        index = client.post("/v2/repository/index", json={}).json()
        assert index == [
            {
                "name": "mlp",
                "version": "1",
                "state": "SLEEPING",
                "reason": f"level {level}",
                "level": level,
            }
        ]
        assert client.get("/v2/models/mlp/ready").status_code == 200
        np.testing.assert_array_equal(_logits(client), before)  # woken on demand
        assert client.post("/v2/repository/index").json()[0]["state"] == "READY"
        assert client.post("/v2/repository/models/mlp/unload", json=body).status_code == 200
        assert client.post("/v2/repository/models/mlp/load").status_code == 200
        assert client.post("/v2/repository/index").json()[0]["state"] == "READY"
        np.testing.assert_array_equal(_logits(client), before)
        metrics = client.get("/metrics").text
        assert f'ember_model_wake_seconds_count{{level="{level}",model="mlp"}} 2.0' in metrics
        stats = client.get("/v2/models/mlp/stats").json()["model_stats"][0]
        assert stats["sleep_stats"][level]["wake"]["count"] == 2


def test_an_unknown_level_is_a_400_naming_the_choices(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/v2/repository/models/mlp/unload", json={"parameters": {"level": "warm"}}
    )
    assert r.status_code == 400
    assert "'host', 'disk'" in r.json()["error"]
    assert httpx.post(server.url + "/v2/repository/index").json()[0]["state"] == "READY"


@pytest.mark.parametrize("level", ["host", "disk", None])
def test_an_unload_during_a_request_waiting_for_its_batch(
    tmp_path: Path, mlp_weights: None, level: str | None
) -> None:
    """max_queue_delay_ms 5000: a lone request waits for company. A sleep meanwhile answers it
    first, right; a full unload answers it 503 at once (retryable), never the 5 s later."""
    config = yaml.safe_load(MLP_CONFIG.read_text())
    config.update(max_queue_delay_ms=5000, source=str(MLP_CONFIG.parent / config["source"]))
    config["options"]["module"] = str(MLP_CONFIG.parent / config["options"]["module"])
    path = tmp_path / "mlp.yaml"
    path.write_text(yaml.safe_dump(config))
    with running_server(path) as server, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            httpx.post, f"{server.url}/v2/models/mlp/infer", json=infer_body(rows=1), timeout=30
        )
        deadline = time.monotonic() + 10
        while 'ember_queue_depth{model="mlp"} 1.0' not in httpx.get(server.url + "/metrics").text:
            assert time.monotonic() < deadline, "the request never waited for its batch"
            time.sleep(0.01)
        body = {"parameters": {"level": level}} if level else None
        unload = httpx.post(f"{server.url}/v2/repository/models/mlp/unload", json=body, timeout=30)
        assert unload.status_code == 200, unload.text
        answer = waiting.result(timeout=30)
        if level:
            assert answer.status_code == 200  # run before the weights were put away
            x = np.array(infer_body(rows=1)["inputs"][0]["data"], dtype=np.float32)
            got = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(got.reshape(1, 10), reference(x), rtol=1e-4, atol=1e-5)
        else:
            assert answer.status_code == 503 and answer.headers["retry-after"]
            assert "unloaded" in answer.json()["error"]
            assert answer.elapsed.total_seconds() < 5  # at once, not after the delay
