"""A real ``ember serve`` of examples/mlp under two names, with a device memory budget that fits
one: alternating requests are all answered with the right logits, one of the two asleep."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import ROOT
from tests.integration.test_mlp_server import infer_body, reference
from tests.servers import running_server

MLP = ROOT / "examples" / "mlp"


def _config(tmp_path: Path) -> Path:
    model = {
        "handler": "torch-module",
        "source": str(MLP / "weights"),
        "device": "cpu",
        "options": {
            "module": f"{MLP / 'mlp.py'}:MLP",
            "kwargs": {"in_features": 784, "hidden": 512, "classes": 10},
        },
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [784]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}],
        "max_batch_size": 8,
    }
    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"name": "one", **model}, {"name": "two", **model}]))
    return path


def test_two_mlps_under_a_budget_that_fits_one_take_turns(
    tmp_path: Path, mlp_weights: None
) -> None:
    # the MLP's weights: (784 * 512 + 512 + 512 * 10 + 10) * 4 = 1,628,200 bytes, 1.55 MiB
    with (
        running_server(_config(tmp_path), "--device-memory-budget", "2MiB") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        index = client.post("/v2/repository/index").json()
        assert [(m["name"], m["state"]) for m in index] == [
            ("one", "READY"),
            ("two", "SLEEPING"),
        ]
        body = infer_body(rows=2)
        expected = reference(np.array(body["inputs"][0]["data"], dtype=np.float32))
        for name in ["two", "one", "two", "one", "one", "two"]:
            r = client.post(f"/v2/models/{name}/infer", json=body)
            assert r.status_code == 200, r.text
            logits = np.array(r.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(logits.reshape(2, 10), expected, rtol=1e-4, atol=1e-5)
            states = {m["name"]: m["state"] for m in client.post("/v2/repository/index").json()}
            assert states == {name: "READY", ({"one", "two"} - {name}).pop(): "SLEEPING"}
        gauges = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("ember_device_memory_")
        }
        assert gauges == {
            "ember_device_memory_budget_bytes": 2 * 2**20,
            "ember_device_memory_hot_bytes": 1_628_200,
        }
