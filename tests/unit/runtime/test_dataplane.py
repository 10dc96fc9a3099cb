"""The data plane's output selection and parameter checks, over a real identity model.

The model is ``tests/fixtures/models.py``'s ``Identity`` served by the torch-module handler from a
repository in ``tmp_path``: two FP32 inputs ``a`` and ``b``, returned as outputs ``a_out`` and
``b_out``. Binary inputs carry what JSON cannot (NaN, Infinity).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import save_file

from runtime.config import load_model_configs
from runtime.dataplane import DataPlane, InferResult
from runtime.errors import InvalidInput
from runtime.metrics import RuntimeMetrics
from runtime.protocol import parse_inference_request
from runtime.repository import ModelRepository
from runtime.sources import WeightSources
from tests.conftest import FIXTURES


@pytest.fixture
async def dataplane(tmp_path: Path) -> AsyncIterator[DataPlane]:
    (tmp_path / "weights").mkdir()
    save_file({}, str(tmp_path / "weights" / "model.safetensors"))
    spec = [{"name": n, "datatype": "FP32", "shape": [2]} for n in ("a", "b")]
    config = {
        "name": "id",
        "handler": "torch-module",
        "source": str(tmp_path / "weights"),
        "device": "cpu",
        "options": {"module": f"{FIXTURES / 'models.py'}:Identity"},
        "inputs": spec,
        "outputs": [{**s, "name": s["name"] + "_out"} for s in spec],
    }
    path = tmp_path / "id.json"
    path.write_text(json.dumps(config))
    metrics = RuntimeMetrics()
    repo = ModelRepository(
        load_model_configs(path), metrics, WeightSources(cache_dir=tmp_path / "cache")
    )
    await repo.load("id")
    try:
        yield DataPlane(repo, metrics)
    finally:
        await repo.aclose()


def body(**extra: Any) -> dict[str, Any]:
    inputs = [{"name": n, "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]} for n in "ab"]
    return {"inputs": inputs, **extra}


async def infer(dataplane: DataPlane, payload: dict[str, Any]) -> InferResult:
    return await dataplane.infer("id", None, parse_inference_request(payload))


def shape_of(result: InferResult) -> list[tuple[str, bool]]:
    return [(tensor.name, binary) for tensor, binary in result.outputs]


async def test_an_empty_outputs_list_means_every_output_as_json(dataplane: DataPlane) -> None:
    every = shape_of(await infer(dataplane, body()))
    assert every == [("a_out", False), ("b_out", False)]
    assert shape_of(await infer(dataplane, body(outputs=[]))) == every


async def test_binary_data_output_with_an_empty_outputs_list_means_every_output_binary(
    dataplane: DataPlane,
) -> None:
    result = await infer(dataplane, body(outputs=[], parameters={"binary_data_output": True}))
    assert shape_of(result) == [("a_out", True), ("b_out", True)]


async def test_binary_data_per_output_and_its_default(dataplane: DataPlane) -> None:
    outputs = [{"name": "b_out", "parameters": {"binary_data": False}}, {"name": "a_out"}]
    result = await infer(dataplane, body(outputs=outputs, parameters={"binary_data_output": True}))
    assert shape_of(result) == [("b_out", False), ("a_out", True)]


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], {}])
async def test_a_non_boolean_binary_data_is_a_400_naming_it(
    dataplane: DataPlane, value: Any
) -> None:
    outputs = [{"name": "a_out", "parameters": {"binary_data": value}}]
    with pytest.raises(InvalidInput) as info:
        await infer(dataplane, body(outputs=outputs))
    assert info.value.status_code == 400
    assert info.value.message.startswith(
        "output 'a_out': parameter 'binary_data' must be a boolean (true or false), got "
    )
    with pytest.raises(InvalidInput) as info:
        await infer(dataplane, body(parameters={"binary_data_output": value}))
    assert "request: parameter 'binary_data_output' must be a boolean" in info.value.message


@pytest.mark.parametrize("value", ["8", 8.0, True, -1, None])
async def test_a_binary_data_size_of_the_wrong_type_is_a_400_naming_it(
    dataplane: DataPlane, value: Any
) -> None:
    payload = body()
    del payload["inputs"][0]["data"]
    payload["inputs"][0]["parameters"] = {"binary_data_size": value}
    request = parse_inference_request(payload)
    with pytest.raises(InvalidInput) as info:
        await dataplane.infer("id", None, request, memoryview(bytes(8)))
    assert info.value.message.startswith(
        "input 'a': parameter 'binary_data_size' must be a non-negative integer, got "
    )


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
async def test_a_non_finite_output_is_refused_in_json_and_exact_in_binary(
    dataplane: DataPlane, value: float
) -> None:
    payload = body()
    del payload["inputs"][0]["data"]
    payload["inputs"][0]["parameters"] = {"binary_data_size": 8}
    raw = memoryview(np.array([value, 1.0], dtype="<f4").tobytes())
    with pytest.raises(InvalidInput) as info:
        await dataplane.infer("id", None, parse_inference_request(payload), raw)
    assert info.value.message == (
        "output 'a_out' holds NaN or Infinity, which JSON cannot represent; request it with "
        '"binary_data": true'
    )
    failed = dataplane.metrics.registry.get_sample_value(
        "ember_inference_requests_total", {"model": "id", "code": "400"}
    )
    assert failed == 1  # counted as the 400 it is, not as a success
    # the finite output is still fine in JSON next to the other one in binary
    payload["outputs"] = [
        {"name": "a_out", "parameters": {"binary_data": True}},
        {"name": "b_out"},
    ]
    result = await dataplane.infer("id", None, parse_inference_request(payload), raw)
    (a, a_binary), (_, b_binary) = result.outputs
    assert a_binary and not b_binary
    np.testing.assert_array_equal(a.array, np.array([value, 1.0], dtype=np.float32))
