"""``POST /v1/embeddings`` on ``ember serve --config examples/minilm/model.yaml``, called by the
``openai`` client: the vectors equal the v2 ``infer`` ones, as floats and as base64."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.integration.test_minilm import TEXTS, infer_texts
from tests.servers import ServerProcess


@pytest.fixture
def client(minilm_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=minilm_server.url + "/v1", api_key="unused", max_retries=0)


def _v2(server: ServerProcess, texts: list[str]) -> np.ndarray:
    answer = infer_texts(server, texts)
    assert answer.status_code == 200, answer.text
    return np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(len(texts), -1)


def test_openai_client_embeddings_equal_v2_infer(
    minilm_server: ServerProcess, client: openai.OpenAI
) -> None:
    expected = _v2(minilm_server, TEXTS)
    # untold, the client asks for base64 and decodes it itself; told "float", it gets lists
    for fmt in (openai.NOT_GIVEN, "float"):
        answer = client.embeddings.create(model="minilm", input=TEXTS, encoding_format=fmt)
        assert [d.index for d in answer.data] == [0, 1, 2] and answer.model == "minilm"
        got = np.asarray([d.embedding for d in answer.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert answer.usage.prompt_tokens == answer.usage.total_tokens > len(TEXTS)
    one = client.embeddings.create(model="minilm", input=TEXTS[0])
    np.testing.assert_allclose(one.data[0].embedding, expected[0], atol=1e-5)
    assert "minilm" in [m.id for m in client.models.list()]


def test_kserve_base_url_and_raw_base64(minilm_server: ServerProcess) -> None:
    body = {"model": "minilm", "input": "hello", "encoding_format": "base64"}
    answer = httpx.post(minilm_server.url + "/openai/v1/embeddings", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    vector = np.frombuffer(base64.b64decode(answer.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(vector, _v2(minilm_server, ["hello"])[0], atol=1e-5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "minilm", "input": [1, 2, 3]}, "input"),
        ({"model": "minilm", "input": []}, "input"),
        ({"model": "minilm", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x"}, "model"),
    ],
)
def test_bad_requests_are_openai_shaped_400s(
    minilm_server: ServerProcess, body: dict[str, object], param: str
) -> None:
    answer = httpx.post(minilm_server.url + "/v1/embeddings", json=body, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_unknown_model_is_a_404_and_an_overlong_text_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="nope", input="x")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught_400:
        client.embeddings.create(model="minilm", input="x" * 40_000)
    assert "max_text_chars" in caught_400.value.message
