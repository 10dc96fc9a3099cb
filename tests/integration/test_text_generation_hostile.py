"""Hostile input over HTTP against ``ember serve --config examples/tiny-llm/model.yaml``: each
is a clear 4xx in OpenAI's shape (or the OIP shape on ``/v2/.../generate``), and the server
still answers afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_text_generation import server

__all__ = ["server"]  # the module's real tiny-llm server, shared with these tests

Body = dict[str, Any]
_PROMPT: Body = {"model": "tiny-llm", "prompt": "Hello", "max_tokens": 2}
_CHAT: Body = {"model": "tiny-llm", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120) as client:
        yield client
    # whatever was sent, the server still generates (greedy: a sampled first token of this
    # random model is EOS one time in a few hundred, and then nothing is generated)
    body = {**_PROMPT, "temperature": 0}
    answer = httpx.post(f"{server}/v1/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] >= 1


def _openai_error(answer: httpx.Response, status: int, param: str | None = None) -> str:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return str(error["message"])


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("max_tokens", "5"),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("max_tokens", 0),
        ("max_tokens", -1),
        ("max_tokens", 10**9),
        ("max_completion_tokens", "5"),
        ("temperature", "hot"),
        ("temperature", -0.5),
        ("temperature", [1]),
        ("top_p", {}),
        ("top_p", 0),
        ("top_p", 1.5),
        ("seed", 1.5),
        ("seed", "7"),
        ("stop", 5),
        ("stop", [""]),
        ("stop", ["a", 3]),
        ("stop", ["x"] * 9),
        ("n", "2"),
        ("n", True),
        ("n", 0),
        ("stream", "yes"),
        ("stream", 1),
        ("stream_options", "usage"),
        ("stream_options", {"include_usage": "yes"}),
    ],
)
@pytest.mark.parametrize("route", ["completions", "chat/completions"])
def test_a_wrong_sampling_parameter_is_a_400_naming_it(
    http: httpx.Client, route: str, param: str, value: Any
) -> None:
    base = _PROMPT if route == "completions" else _CHAT
    body = {k: v for k, v in base.items() if k != "max_tokens"} | {param: value}
    if param == "stream_options":
        body["stream"] = True
    _openai_error(http.post(f"/v1/{route}", json=body), 400, param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny-llm", "prompt": 5}, "prompt"),
        ({"model": "tiny-llm", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "tiny-llm"}, "prompt"),
        ({"prompt": "x"}, "model"),
        ({"model": 3, "prompt": "x"}, "model"),
        ({"model": "tiny-llm", "messages": "hi"}, "messages"),
        ({"model": "tiny-llm", "messages": []}, "messages"),
        ({"model": "tiny-llm", "messages": [{"content": "hi"}]}, "messages"),
        ({"model": "tiny-llm", "messages": [{"role": "user", "content": 5}]}, "messages"),
    ],
)
def test_a_wrong_prompt_or_model_is_a_400_naming_it(
    http: httpx.Client, body: Body, param: str
) -> None:
    route = "chat/completions" if "messages" in body else "completions"
    _openai_error(http.post(f"/v1/{route}", json=body), 400, param)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b"\x00\x01\x02\xff\xfe binary",
        b'{"model": "tiny-llm", "prompt": "\xff\xfe"}',  # invalid UTF-8 inside a string
        b'{"model": "tiny-llm", "prompt": "\\ud800"}',  # a lone surrogate
    ],
)
@pytest.mark.parametrize("route", ["/v1/completions", "/openai/v1/chat/completions"])
def test_malformed_or_binary_bodies_are_400s(http: httpx.Client, route: str, raw: bytes) -> None:
    answer = http.post(route, content=raw, headers={"content-type": "application/json"})
    _openai_error(answer, 400)


def test_an_unknown_model_is_a_404_everywhere(http: httpx.Client) -> None:
    for route in ("/v1/completions", "/openai/v1/chat/completions"):
        body = {**(_PROMPT if "chat" not in route else _CHAT), "model": "nope"}
        message = _openai_error(http.post(route, json=body), 404)
        assert "nope" in message
        assert http.post(route, json=body).json()["error"]["code"] == "model_not_found"
    answer = http.post("/v2/models/nope/generate", json={"text_input": "x"})
    assert answer.status_code == 404 and "nope" in answer.json()["error"]


def test_huge_prompts_are_refused_before_they_are_queued(http: httpx.Client) -> None:
    # past the character bound: refused unread
    body = {**_PROMPT, "prompt": "a" * 1_000_001}
    assert "characters" in _openai_error(http.post("/v1/completions", json=body), 400, "prompt")
    # under it, but past max_model_len tokens once tokenized
    body = {**_PROMPT, "prompt": "word " * 20_000}
    assert "max_model_len" in _openai_error(http.post("/v1/completions", json=body), 400)
    # many messages, each under the bound, together far past it
    many = [{"role": "user", "content": "b" * 900_000}] * 3
    body = {"model": "tiny-llm", "messages": many}
    _openai_error(http.post("/v1/chat/completions", json=body), 400, "messages")


def test_max_tokens_one_and_a_stop_longer_than_the_output(http: httpx.Client) -> None:
    one = http.post("/v1/completions", json={**_PROMPT, "max_tokens": 1, "temperature": 0})
    assert one.status_code == 200, one.text
    assert one.json()["usage"]["completion_tokens"] == 1
    assert one.json()["choices"][0]["finish_reason"] == "length"
    long_stop = {**_PROMPT, "max_tokens": 3, "temperature": 0, "stop": ["z" * 200]}
    answer = http.post("/v1/completions", json=long_stop)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["finish_reason"] == "length"
    assert answer.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    "body",
    [
        {"text_input": 3},
        {"text_input": "x", "parameters": "hot"},
        {"text_input": "x", "parameters": {"max_tokens": 0}},
        {"text_input": "x", "parameters": {"temperature": "hot"}},
        {"text_input": "x", "max_tokens": -3},
        {"text_input": "x", "parameters": {"stop": 7}},
        {"text_input": "a" * 1_000_001},
    ],
)
@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_oip_generate_refuses_bad_input_in_its_shape(
    http: httpx.Client, route: str, body: Body
) -> None:
    answer = http.post(f"/v2/models/tiny-llm/{route}", json=body)
    assert answer.status_code == 400, answer.text
    assert isinstance(answer.json()["error"], str)


@pytest.mark.parametrize("raw", [b"{bad", b"\xff\xfe", b"[]"])
def test_oip_generate_refuses_malformed_bodies(http: httpx.Client, raw: bytes) -> None:
    answer = http.post("/v2/models/tiny-llm/generate", content=raw)
    assert answer.status_code == 400 and isinstance(answer.json()["error"], str)
