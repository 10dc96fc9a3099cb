"""A real ``ember serve`` of examples/mlp, called by unmodified tritonclient, kserve's client, and
raw HTTP for everything a client can get wrong."""

from __future__ import annotations

import asyncio
import gzip
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.servers import ServerProcess
from tests.spec import check_response

pytestmark = pytest.mark.usefixtures("mlp_server")
HEADER = "Inference-Header-Content-Length"


def host(server: ServerProcess) -> str:
    return server.url.removeprefix("http://")


def infer_body(rows: int = 1, **extra: Any) -> dict[str, Any]:
    data = np.linspace(0, 1, rows * 784, dtype=np.float32).reshape(rows, 784)
    return {
        "inputs": [
            {"name": "input", "shape": [rows, 784], "datatype": "FP32", "data": data.tolist()}
        ],
        **extra,
    }


def reference(x: np.ndarray) -> np.ndarray:
    """The MLP's forward pass, computed here from the same weights."""
    from safetensors.numpy import load_file

    from tests.conftest import ROOT

    w = load_file(ROOT / "examples/mlp/weights/model.safetensors")
    hidden = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0)
    return hidden @ w["fc2.weight"].T + w["fc2.bias"]


# ------------------------------------------------------------------------------------ clients


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("rows", [1, 32])
def test_tritonclient_infer(mlp_server: ServerProcess, binary: bool, rows: int) -> None:
    client = triton.InferenceServerClient(host(mlp_server))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    x = np.random.default_rng(rows).random((rows, 784), dtype=np.float32)
    inp = triton.InferInput("input", [rows, 784], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    np.testing.assert_allclose(result.as_numpy("logits"), reference(x), rtol=1e-4, atol=1e-5)
    client.close()


def test_tritonclient_metadata_config_stats_and_repository(mlp_server: ServerProcess) -> None:
    client = triton.InferenceServerClient(host(mlp_server))
    meta = client.get_server_metadata()
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])
    model = client.get_model_metadata("mlp")
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}]
    assert client.get_model_config("mlp")["max_batch_size"] == 64
    stats = client.get_inference_statistics("mlp")["model_stats"][0]
    assert stats["name"] == "mlp" and stats["inference_count"] >= 0
    index = client.get_model_repository_index()
    assert index == [{"name": "mlp", "version": "1", "state": "READY", "reason": ""}]
    with pytest.raises(InferenceServerException, match="not in the repository"):
        client.get_model_metadata("nope")
    client.close()


def test_kserve_rest_client(mlp_server: ServerProcess) -> None:
    from kserve import InferInput, InferRequest
    from kserve.inference_client import InferenceRESTClient, RESTConfig

    async def call() -> np.ndarray:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        x = np.ones((2, 784), dtype=np.float32)
        request = InferRequest(
            model_name="mlp",
            infer_inputs=[InferInput("input", [2, 784], "FP32", data=x.tolist())],
        )
        try:
            assert await client.is_server_ready(mlp_server.url)
            response = await client.infer(mlp_server.url, request, model_name="mlp")
        finally:
            await client.close()
        return response.outputs[0].as_numpy()

    logits = asyncio.run(call())
    np.testing.assert_allclose(
        logits, reference(np.ones((2, 784), np.float32)), rtol=1e-4, atol=1e-5
    )


def test_no_content_type_and_nested_or_flat_data(mlp_server: ServerProcess) -> None:
    body = infer_body(2)
    flat = json.loads(json.dumps(body))
    flat["inputs"][0]["data"] = np.asarray(flat["inputs"][0]["data"]).reshape(-1).tolist()
    with httpx.Client(base_url=mlp_server.url) as client:
        nested = client.post("/v2/models/mlp/infer", content=json.dumps(body))
        flat_r = client.post("/v2/models/mlp/versions/1/infer", content=json.dumps(flat))
    assert nested.status_code == flat_r.status_code == 200
    assert nested.json()["outputs"][0]["data"] == flat_r.json()["outputs"][0]["data"]
    check_response("inference_response", nested.json())


def test_gzip_request_body(mlp_server: ServerProcess) -> None:
    raw = gzip.compress(json.dumps(infer_body()).encode())
    r = httpx.post(
        mlp_server.url + "/v2/models/mlp/infer", content=raw, headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 200, r.text


def test_raw_binary_request_with_header_length_zero(mlp_server: ServerProcess) -> None:
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    r = httpx.post(
        mlp_server.url + "/v2/models/mlp/infer",
        content=x.tobytes(),
        headers={
            "Inference-Header-Content-Length": "0",
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    logits = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 10)
    np.testing.assert_allclose(logits, reference(x), rtol=1e-4, atol=1e-5)


def test_binary_data_output_for_every_output(mlp_server: ServerProcess) -> None:
    body = infer_body(1, parameters={"binary_data_output": True})
    r = httpx.post(mlp_server.url + "/v2/models/mlp/infer", content=json.dumps(body))
    assert r.status_code == 200
    n = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(r.content[:n])
    out = header["outputs"][0]
    assert "data" not in out and out["parameters"]["binary_data_size"] == 40
    assert len(r.content) == n + 40


def test_an_empty_outputs_list_answers_every_output_as_json(mlp_server: ServerProcess) -> None:
    r = _post(mlp_server, "/v2/models/mlp/infer", infer_body(1, outputs=[]))
    assert r.status_code == 200, r.text
    assert HEADER not in r.headers and r.headers["content-type"] == "application/json"
    (out,) = r.json()["outputs"]
    assert out["name"] == "logits" and len(out["data"]) == 10
    check_response("inference_response", r.json())


@pytest.mark.parametrize("value", ["false", "true", 0, None])
def test_a_non_boolean_binary_data_is_a_400_naming_it(
    mlp_server: ServerProcess, value: Any
) -> None:
    outputs = [{"name": "logits", "parameters": {"binary_data": value}}]
    r = _post(mlp_server, "/v2/models/mlp/infer", infer_body(1, outputs=outputs))
    assert r.status_code == 400, r.text
    assert "parameter 'binary_data' must be a boolean" in r.json()["error"]
    check_response("inference_error_response", r.json())
    r = _post(
        mlp_server, "/v2/models/mlp/infer", infer_body(1, parameters={"binary_data_output": value})
    )
    assert r.status_code == 400, r.text
    assert "parameter 'binary_data_output' must be a boolean" in r.json()["error"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_input_is_a_400(mlp_server: ServerProcess, literal: str) -> None:
    data = ", ".join(["0.5"] * 783 + [literal])
    tensor = f'{{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [{data}]}}'
    raw = f'{{"inputs": [{tensor}]}}'
    r = _post(mlp_server, "/v2/models/mlp/infer", raw.encode())
    assert r.status_code == 400, r.text
    assert (
        "NaN, Infinity and numbers beyond the double range are not JSON numbers"
        in r.json()["error"]
    )
    check_response("inference_error_response", r.json())


def test_non_finite_output_is_refused_in_json_and_exact_in_binary(
    mlp_server: ServerProcess,
) -> None:
    x = np.full((1, 784), np.inf, dtype=np.float32)  # logits come out NaN
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 784],
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ]
    }

    def send(**extra: Any) -> httpx.Response:
        head = json.dumps({**header, **extra}).encode()
        return _post(
            mlp_server, "/v2/models/mlp/infer", head + x.tobytes(), **{HEADER: str(len(head))}
        )

    r = send()
    assert r.status_code == 400, r.text
    assert r.json()["error"] == (
        "output 'logits' holds NaN or Infinity, which JSON cannot represent; request it with "
        '"binary_data": true'
    )
    r = send(outputs=[{"name": "logits", "parameters": {"binary_data": True}}])
    assert r.status_code == 200, r.text
    n = int(r.headers[HEADER])
    logits = np.frombuffer(r.content[n:], dtype="<f4")
    assert logits.shape == (10,) and not np.isfinite(logits).any()


# ------------------------------------------------------------------------------------ batching


def test_batched_results_equal_unbatched(mlp_server: ServerProcess) -> None:
    rng = np.random.default_rng(42)
    rows = [rng.random((1, 784), dtype=np.float32) for _ in range(48)]

    def one(x: np.ndarray) -> np.ndarray:
        with httpx.Client(base_url=mlp_server.url) as client:
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 784],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
            r = client.post("/v2/models/mlp/infer", content=json.dumps(body))
            assert r.status_code == 200, r.text
            return np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)

    before = _batch_stats(mlp_server)
    sequential = [one(x) for x in rows]
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(one, rows))
    after = _batch_stats(mlp_server)
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # concurrency really produced batches larger than one
    grew = {size for size, count in after.items() if count > before.get(size, 0) and size > 1}
    assert grew, f"no batch larger than 1 ran: {after}"


def _batch_stats(server: ServerProcess) -> dict[int, int]:
    stats = httpx.get(server.url + "/v2/models/mlp/stats").json()["model_stats"][0]
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


# ------------------------------------------------------------------------------------ errors


def _post(server: ServerProcess, path: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers=headers)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/mlp/infer", b"{not json", 400, "not valid JSON"),
        ("/v2/models/mlp/infer", b"[1, 2]", 400, "must be a JSON object"),
        ("/v2/models/mlp/infer", {"inputs": []}, 400, "inputs"),
        ("/v2/models/mlp/infer", {"inputs": [{"name": "input"}]}, 400, "shape"),
        ("/v2/models/nope/infer", infer_body(), 404, "'nope' is not in the repository"),
        ("/v2/models/mlp/versions/9/infer", infer_body(), 404, "version '9'"),
        (
            "/v2/models/mlp/infer",
            {
                "inputs": [
                    {"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}
                ]
            },
            400,
            "has no input 'pixels'",
        ),
        (
            "/v2/models/mlp/infer",
            {
                "inputs": [
                    {"name": "input", "shape": [1, 784], "datatype": "INT32", "data": [0] * 784}
                ]
            },
            400,
            "datatype INT32, model expects FP32",
        ),
        (
            "/v2/models/mlp/infer",
            {
                "inputs": [
                    {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 10}
                ]
            },
            400,
            "needs 784 elements, data has 10",
        ),
        (
            "/v2/models/mlp/infer",
            {
                "inputs": [
                    {"name": "input", "shape": [-1, 784], "datatype": "FP32", "data": [0] * 784}
                ]
            },
            400,
            "negative dimension",
        ),
        (
            "/v2/models/mlp/infer",
            {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [0] * 10}]},
            400,
            "model expects [-1, 784]",
        ),
        (
            "/v2/models/mlp/infer",
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [65, 784],
                        "datatype": "FP32",
                        "data": [0] * 65 * 784,
                    }
                ]
            },
            400,
            "batch size 65 is outside 1..64",
        ),
        (
            "/v2/models/mlp/infer",
            {"inputs": [{"name": "input", "shape": [784], "datatype": "FP32", "data": [0] * 784}]},
            400,
            "shape [784] has no batch dimension; the model batches (max_batch_size 64), so its "
            "shape is [-1, 784], e.g. [1, 784]",
        ),
        (
            "/v2/models/mlp/infer",
            {
                "inputs": [
                    {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": ["x"] * 784}
                ]
            },
            400,
            "does not fit datatype FP32",
        ),
        ("/v2/models/mlp/infer", infer_body(outputs=[{"name": "probs"}]), 400, "no output 'probs'"),
    ],
)
def test_caller_mistakes_are_oip_errors(
    mlp_server: ServerProcess, path: str, body: Any, status: int, message: str
) -> None:
    r = _post(mlp_server, path, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert set(r.json()) == {"error"}
    check_response("inference_error_response", r.json())


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("unload", {"level": "host"}, """unknown key 'level' (it goes under "parameters")"""),
        ("unload", {"parameters": {"level": "host"}, "force": True}, "unknown key 'force'"),
        ("unload?level=host", b"", "query parameters are not read ('level')"),
        ("load", {"parameters": {"config": "{}"}}, "unknown parameter 'config'"),
        ("load?x=1", b"", "query parameters are not read"),
        ("load", {"model": "mlp"}, "unknown key 'model'"),
    ],
)
def test_a_misplaced_repository_parameter_is_a_400_and_changes_nothing(
    mlp_server: ServerProcess, path: str, body: Any, message: str
) -> None:
    r = _post(mlp_server, f"/v2/repository/models/mlp/{path}", body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    index = _post(mlp_server, "/v2/repository/index?ready=true", b"")
    assert index.status_code == 400 and "query parameters" in index.json()["error"]
    assert httpx.get(mlp_server.url + "/v2/models/mlp/ready").status_code == 200


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"Inference-Header-Content-Length": "abc"}, b"{}", "not a non-negative integer"),
        ({"Inference-Header-Content-Length": b"\xb2"}, b"{}", "not a non-negative integer"),
        ({"Inference-Header-Content-Length": b"1\xb9"}, b"{}", "not a non-negative integer"),
        ({"Inference-Header-Content-Length": "99999"}, b"{}", "exceeds the body"),
        ({"Inference-Header-Content-Length": "0"}, b"\0" * 7, "does not fit shape"),
        ({"Content-Encoding": "br"}, b"{}", "not supported"),
        ({"Content-Encoding": "gzip"}, b"not gzip", "not valid gzip"),
    ],
)
def test_bad_framing_is_400(
    mlp_server: ServerProcess, headers: dict[str, str | bytes], body: bytes, message: str
) -> None:
    r = httpx.post(mlp_server.url + "/v2/models/mlp/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_binary_size_mismatches(mlp_server: ServerProcess) -> None:
    def send(declared: int, actual: int) -> httpx.Response:
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 784],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": declared},
                    }
                ]
            }
        ).encode()
        return httpx.post(
            mlp_server.url + "/v2/models/mlp/infer",
            content=header + b"\0" * actual,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )

    assert "runs past the end" in send(3136, 100).json()["error"]
    assert "needs 3136 bytes, got 100" in send(100, 100).json()["error"]
    assert "no input claims" in send(3136, 3200).json()["error"]
    assert send(3136, 3136).status_code == 200


def test_unknown_routes_and_methods_are_oip_errors(mlp_server: ServerProcess) -> None:
    r = httpx.get(mlp_server.url + "/v3/models")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(mlp_server.url + "/v2/models/mlp/infer")
    assert r.status_code == 405 and "error" in r.json()


def test_metadata_responses_match_the_spec(mlp_server: ServerProcess) -> None:
    with httpx.Client(base_url=mlp_server.url) as client:
        check_response("metadata_server_response", client.get("/v2").json())
        check_response("metadata_server_response", client.get("/v2/").json())
        check_response("metadata_model_response", client.get("/v2/models/mlp").json())
        check_response("metadata_model_response", client.get("/v2/models/mlp/versions/1").json())
        check_response("metadata_model_error_response", client.get("/v2/models/x").json())
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/models/mlp/versions/1/ready").status_code == 200
        assert client.get("/v2/models/mlp/versions/2/ready").status_code == 404


def test_prometheus_metrics(mlp_server: ServerProcess) -> None:
    httpx.post(mlp_server.url + "/v2/models/mlp/infer", content=json.dumps(infer_body()))
    text = httpx.get(mlp_server.url + "/metrics").text
    for name in (
        'ember_inference_requests_total{code="200",model="mlp"}',
        "ember_inference_request_duration_seconds_bucket",
        "ember_batch_size_bucket",
        'ember_queue_depth{model="mlp"}',
        'ember_model_load_duration_seconds{model="mlp"}',
    ):
        assert name in text, name
