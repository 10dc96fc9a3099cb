"""Every datatype through a real server and tritonclient, JSON and binary, plus BF16 in binary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as triton
from safetensors.torch import save_file
from tritonclient.utils import InferenceServerException

from tests.conftest import FIXTURES
from tests.servers import ServerProcess, running_server, wait_for_state

NUMERIC = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@pytest.fixture(scope="module")
def identity_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("identity")
    (root / "weights").mkdir()
    save_file({}, str(root / "weights" / "model.safetensors"))
    tensors = [
        {"name": f"t_{dt.lower()}", "datatype": dt, "shape": [3]} for dt in [*NUMERIC, "BF16"]
    ]
    config = {
        "name": "identity",
        "handler": "torch-module",
        "source": str(root / "weights"),
        "options": {"module": f"{FIXTURES / 'models.py'}:Identity"},
        "inputs": tensors,
        "outputs": tensors,
        "max_batch_size": 8,
        "max_queue_delay_ms": 1,
    }
    path = root / "model.json"
    path.write_text(json.dumps(config))
    with running_server(path) as server:
        yield server


def values(datatype: str, rows: int) -> np.ndarray:
    dtype = NUMERIC[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True]] * rows)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.array([[info.min, 7, info.max]] * rows, dtype=dtype)
    return np.array([[-1.5, 0.25, 1024.0]] * rows, dtype=dtype)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("rows", [1, 4])
def test_every_numeric_datatype_round_trips(
    identity_server: ServerProcess, binary: bool, rows: int
) -> None:
    client = triton.InferenceServerClient(identity_server.url.removeprefix("http://"))
    inputs, outputs, sent = [], [], {}
    for dt in NUMERIC:
        x = values(dt, rows)
        sent[dt] = x
        inp = triton.InferInput(f"t_{dt.lower()}", [rows, 3], dt)
        inp.set_data_from_numpy(x, binary_data=binary)
        inputs.append(inp)
        outputs.append(triton.InferRequestedOutput(f"t_{dt.lower()}", binary_data=binary))
    bf = np.array([[1.0, -2.5, 3.0]] * rows, dtype=ml_dtypes.bfloat16)
    bf_in = triton.InferInput("t_bf16", [rows, 3], "BF16")
    bf_in.set_data_from_numpy(bf, binary_data=True)
    inputs.append(bf_in)
    outputs.append(triton.InferRequestedOutput("t_bf16", binary_data=True))
    result = client.infer("identity", inputs, outputs=outputs)
    for dt, x in sent.items():
        got = result.as_numpy(f"t_{dt.lower()}")
        assert got.dtype == x.dtype, dt
        np.testing.assert_array_equal(got, x, err_msg=dt)
    np.testing.assert_array_equal(
        result.as_numpy("t_bf16").astype(np.float32), bf.astype(np.float32)
    )
    client.close()


def test_non_finite_floats_round_trip_in_binary_and_are_refused_in_json(
    identity_server: ServerProcess,
) -> None:
    """NaN and Infinity: exact through the binary extension; a JSON output is a 400, never null."""
    client = triton.InferenceServerClient(identity_server.url.removeprefix("http://"))
    floats = ("FP16", "FP32", "FP64")

    def call(binary_out: bool) -> triton.InferResult:
        inputs, outputs = [], []
        for dt in NUMERIC:
            x = values(dt, 1)
            if dt in floats:
                x = np.array([[np.nan, np.inf, -np.inf]], dtype=NUMERIC[dt])
            inp = triton.InferInput(f"t_{dt.lower()}", [1, 3], dt)
            inp.set_data_from_numpy(x, binary_data=True)
            inputs.append(inp)
            outputs.append(triton.InferRequestedOutput(f"t_{dt.lower()}", binary_data=binary_out))
        bf = triton.InferInput("t_bf16", [1, 3], "BF16")
        bf.set_data_from_numpy(np.zeros((1, 3), dtype=ml_dtypes.bfloat16), binary_data=True)
        inputs.append(bf)
        outputs.append(triton.InferRequestedOutput("t_bf16", binary_data=True))
        return client.infer("identity", inputs, outputs=outputs)

    result = call(binary_out=True)
    for dt in floats:
        got = result.as_numpy(f"t_{dt.lower()}")
        assert got.dtype == NUMERIC[dt]
        np.testing.assert_array_equal(got, np.array([[np.nan, np.inf, -np.inf]]), err_msg=dt)
    with pytest.raises(InferenceServerException, match="holds NaN or Infinity"):
        call(binary_out=False)
    client.close()


def test_bf16_in_json_is_refused_with_a_reason(identity_server: ServerProcess) -> None:
    body = {"inputs": [{"name": "t_bf16", "shape": [1, 3], "datatype": "BF16", "data": [1, 2, 3]}]}
    r = httpx.post(identity_server.url + "/v2/models/identity/infer", content=json.dumps(body))
    assert r.status_code == 400 and "BF16 has no JSON form" in r.json()["error"]


def test_missing_and_duplicate_inputs(identity_server: ServerProcess) -> None:
    one = {"name": "t_int8", "shape": [1, 3], "datatype": "INT8", "data": [1, 2, 3]}
    url = identity_server.url + "/v2/models/identity/infer"
    r = httpx.post(url, content=json.dumps({"inputs": [one]}))
    assert r.status_code == 400 and "needs input(s)" in r.json()["error"]
    r = httpx.post(url, content=json.dumps({"inputs": [one, one]}))
    assert r.status_code == 400 and "more than once" in r.json()["error"]


def test_identity_weights_file_is_needed(tmp_path: Path) -> None:
    config = {
        "name": "identity",
        "handler": "torch-module",
        "source": str(tmp_path / "nowhere"),
        "options": {"module": f"{FIXTURES / 'models.py'}:Identity"},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
        "outputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
    }
    path = tmp_path / "m.json"
    path.write_text(json.dumps(config))
    with running_server(path, "--stay-on-load-failure", ready=False) as server:
        index = wait_for_state(server, "UNAVAILABLE")
        assert "does not exist" in index["reason"]


def test_bf16_output_in_json_is_refused_before_computing(identity_server: ServerProcess) -> None:
    url = identity_server.url + "/v2/models/identity/infer"
    inputs = []
    for dt in [*NUMERIC, "BF16"]:
        raw = np.zeros((1, 3), dtype=NUMERIC.get(dt, np.uint16)).tobytes()
        inputs.append((dt, raw))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": f"t_{dt.lower()}",
                    "shape": [1, 3],
                    "datatype": dt,
                    "parameters": {"binary_data_size": len(raw)},
                }
                for dt, raw in inputs
            ],
            "outputs": [{"name": "t_bf16"}],
        }
    ).encode()
    r = httpx.post(
        url,
        content=header + b"".join(raw for _, raw in inputs),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and "BF16, which has no JSON form" in r.json()["error"]
