"""A generic group replica: a standby ``ember serve`` told to serve two config files with
``--load-on-demand`` under device and host memory budgets. Ready before any load, each model
loads on its first request, the least recently used go to sleep (at host, then down to disk past
the host budget), and a model whose load fails is UNAVAILABLE while the others answer."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from contracts.serve_order import ServeOrder, encode_order
from tests.conftest import ROOT
from tests.integration.test_mlp_server import infer_body, reference

MLP = ROOT / "examples" / "mlp"
FOOTPRINT = 1_628_200  # (784 * 512 + 512 + 512 * 10 + 10) * 4 bytes
_LISTENING = re.compile(r"listening on (http://\S+)")


def _model(name: str, source: str = "weights") -> dict[str, object]:
    return {  # relative paths: each resolves against its own config file's directory
        "name": name,
        "handler": "torch-module",
        "source": source,
        "device": "cpu",
        "options": {"module": "mlp.py:MLP", "kwargs": {"in_features": 784, "hidden": 512}},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [784]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}],
        "max_batch_size": 8,
    }


def _config_file(directory: Path, models: list[dict[str, object]]) -> Path:
    directory.mkdir()
    (directory / "weights").symlink_to(MLP / "weights")
    (directory / "mlp.py").symlink_to(MLP / "mlp.py")
    (directory / "empty").mkdir()
    path = directory / "models.json"
    path.write_text(json.dumps(models))
    return path


@contextmanager
def _standby_replica(order: ServeOrder) -> Iterator[str]:
    """A standby ``ember serve`` given ``order`` on stdin; yields its URL once it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ember", "serve", "--standby"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    lines: list[str] = []
    url: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = _LISTENING.search(line)
            if match and not url:
                url.append(match.group(1))
                found.set()
        found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert proc.stdin is not None
        proc.stdin.write(encode_order(order).decode())
        proc.stdin.close()
        assert found.wait(120) and url, "".join(lines)
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=url[0], timeout=5) as client:
            while client.get("/v2/health/ready").status_code != 200:  # polled, not slept for
                assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
                time.sleep(0.05)
        yield url[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_group_replica_loads_each_model_on_demand_within_its_budgets(
    tmp_path: Path, mlp_weights: None
) -> None:
    first = _config_file(tmp_path / "a", [_model("one"), _model("two")])
    second = _config_file(tmp_path / "b", [_model("three"), _model("broken", source="empty")])
    order = ServeOrder(
        configs=(first, second),
        port=0,
        load_on_demand=True,
        device_memory_budget=2 * 2**20,
        host_memory_budget=2 * 2**20,
    )
    body = infer_body(rows=2)
    expected = reference(np.array(body["inputs"][0]["data"], dtype=np.float32))
    with _standby_replica(order) as url, httpx.Client(base_url=url, timeout=30) as client:

        def reasons() -> dict[str, str]:
            index = client.post("/v2/repository/index").json()
            return {m["name"]: m["reason"] for m in index}

        index = client.post("/v2/repository/index").json()
        assert {(m["state"], m["reason"], m.get("level")) for m in index} == {
            ("SLEEPING", "level disk (not loaded yet)", "disk")
        }
        assert [m["name"] for m in index] == ["one", "two", "three", "broken"]
        assert client.get("/v2/models/three/ready").status_code == 200
        for name in ["one", "two", "three"]:
            r = client.post(f"/v2/models/{name}/infer", json=body)
            assert r.status_code == 200, r.text
            logits = np.array(r.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(logits.reshape(2, 10), expected, rtol=1e-4, atol=1e-5)
        # the device fits one model, the host one sleeper: the oldest went down to disk
        assert reasons() == {
            "one": "level disk",
            "two": "level host",
            "three": "",
            "broken": "level disk (not loaded yet)",
        }
        gauges = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith(("ember_host_memory_", "ember_device_memory_"))
        }
        assert gauges == {
            "ember_device_memory_budget_bytes": 2 * 2**20,
            "ember_device_memory_hot_bytes": FOOTPRINT,
            "ember_host_memory_budget_bytes": 2 * 2**20,
            "ember_host_memory_sleeping_bytes": FOOTPRINT,
        }
        r = client.post("/v2/models/broken/infer", json=body)
        assert r.status_code == 503 and "failed to load" in r.json()["error"], r.text
        broken = client.post("/v2/repository/index").json()[3]
        assert broken["state"] == "UNAVAILABLE" and broken["failure"] == "weights_missing"
        assert client.post("/v2/models/one/infer", json=body).status_code == 200  # from disk
        r = client.post("/v2/repository/models/broken/load")
        assert r.status_code == 503  # still no weights, and the others still serve
        assert client.post("/v2/models/two/infer", json=body).status_code == 200


def test_a_model_defined_in_two_config_files_is_refused(tmp_path: Path) -> None:
    first = _config_file(tmp_path / "a", [_model("one")])
    second = _config_file(tmp_path / "b", [_model("one")])
    done = subprocess.run(
        [sys.executable, "-m", "ember", "serve", "--config", str(first), "--config", str(second)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"model 'one' is already defined in {first}" in done.stderr
