"""``ember serve --config examples/tiny-llm/model.yaml``, called by the openai client and over
raw HTTP: completions and chat, streamed and not, the OIP generate extension, OpenAI-shaped
errors, and a client that leaves mid-stream freeing its sequence."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.servers import ROOT, running_server

_RUNNING = re.compile(r'^vllm:num_requests_running\{model_name="tiny-llm"\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def server(tiny_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("tiny-llm-config")
    shutil.copy(ROOT / "examples" / "tiny-llm" / "model.yaml", folder / "model.yaml")
    shutil.copytree(tiny_llm_dir, folder / "model")
    with running_server(folder / "model.yaml", env={"OMP_NUM_THREADS": "1"}) as proc:
        yield proc.url


@pytest.fixture
def client(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0) as client:
        yield client  # closed after the test, its sockets with it


def test_completions_streamed_equal_unstreamed(client: openai.OpenAI) -> None:
    whole = client.completions.create(
        model="tiny-llm", prompt="Hello, world", max_tokens=12, temperature=0
    )
    assert whole.choices[0].finish_reason in ("length", "stop")
    assert whole.usage is not None and whole.usage.completion_tokens >= 1
    chunks = client.completions.create(
        model="tiny-llm",
        prompt="Hello, world",
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        parts.extend(c.text for c in chunk.choices)
    assert "".join(parts) == whole.choices[0].text
    assert usage is not None and usage.total_tokens == whole.usage.total_tokens


def test_chat_streamed_equal_unstreamed(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "hi, how are you?"}]
    whole = client.chat.completions.create(
        model="tiny-llm", messages=messages, max_tokens=10, temperature=0
    )
    text = whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant" and text is not None
    stream = client.chat.completions.create(
        model="tiny-llm", messages=messages, max_tokens=10, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == text


def test_openai_errors_and_models(server: str, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny-llm"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-llm", prompt="x", n=2)
    assert "n=1" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-llm", prompt="x", temperature=7)
    assert caught.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    kserve = openai.OpenAI(base_url=server + "/openai/v1", api_key="unused", max_retries=0)
    assert kserve.completions.create(model="tiny-llm", prompt="hi", max_tokens=2).usage


def test_oip_generate_and_stream(server: str) -> None:
    body = {"text_input": "Hello", "parameters": {"max_tokens": 6, "temperature": 0}}
    answer = httpx.post(f"{server}/v2/models/tiny-llm/generate", json=body, timeout=60)
    assert answer.status_code == 200
    whole = answer.json()
    assert whole["model_name"] == "tiny-llm" and isinstance(whole["text_output"], str)
    import json

    streamed = []
    with httpx.stream(
        "POST", f"{server}/v2/models/tiny-llm/generate_stream", json=body, timeout=60
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                streamed.append(json.loads(line[6:]))
    assert "".join(e["text_output"] for e in streamed) == whole["text_output"]
    assert streamed[-1]["finish_reason"] == whole["finish_reason"]
    bad = httpx.post(f"{server}/v2/models/tiny-llm/generate", json={"text_input": 3}, timeout=60)
    assert bad.status_code == 400 and "text_input" in bad.json()["error"]


def _running(server: str) -> float:
    match = _RUNNING.search(httpx.get(f"{server}/metrics", timeout=10).text)
    return float(match.group(1)) if match else 0.0


def test_a_stream_tells_its_tokens_in_a_comment_when_the_activator_asks(server: str) -> None:
    body = {"model": "tiny-llm", "prompt": "Hello", "max_tokens": 4, "stream": True}
    for headers, told in (({"ember-usage": "comment"}, True), ({}, False)):
        r = httpx.post(f"{server}/v1/completions", json=body, headers=headers, timeout=60)
        lines = [line for line in r.text.split("\n\n") if line]
        assert lines[-1] == "data: [DONE]"
        assert lines[-2].startswith(": ember-usage ") is told
        if told:
            usage = json.loads(lines[-2].removeprefix(": ember-usage "))["usage"]
            assert usage["prompt_tokens"] >= 1 and 1 <= usage["completion_tokens"] <= 4
    # a client that asked for the usage gets it its way, never the comment
    asked = {**body, "stream_options": {"include_usage": True}}
    r = httpx.post(f"{server}/v1/completions", json=asked, headers={"ember-usage": "comment"})
    assert ": ember-usage" not in r.text and '"prompt_tokens"' in r.text


def test_a_client_that_leaves_mid_stream_frees_its_sequence(server: str) -> None:
    body = {
        "model": "tiny-llm",
        "prompt": "Hello",
        "max_tokens": 4000,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert _running(server) == 1
    # the connection is closed: the sequence is aborted at the engine's next step
    deadline = time.monotonic() + 30
    while _running(server) != 0:
        assert time.monotonic() < deadline, "the sequence still runs after its client left"
        time.sleep(0.05)


@pytest.mark.parametrize("level", ["host", "disk"])
def test_a_sleeping_model_wakes_for_a_completion(
    server: str, client: openai.OpenAI, level: str
) -> None:
    def greedy() -> str | None:
        answer = client.completions.create(
            model="tiny-llm", prompt="Ember is", max_tokens=10, temperature=0
        )
        return answer.choices[0].text

    before = greedy()
    body = {"parameters": {"level": level}}
    r = httpx.post(f"{server}/v2/repository/models/tiny-llm/unload", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["level"] == level
    index = httpx.post(f"{server}/v2/repository/index", json={}, timeout=10).json()
    assert [m["state"] for m in index if m["name"] == "tiny-llm"] == ["SLEEPING"]
    assert greedy() == before  # woken by the request
    index = httpx.post(f"{server}/v2/repository/index", json={}, timeout=10).json()
    assert [m["state"] for m in index if m["name"] == "tiny-llm"] == ["READY"]


def _sample(text: str, metric: str) -> float:
    match = re.search(rf'^{re.escape(metric)}\{{model_name="tiny-llm"\}} (\S+)$', text, re.M)
    assert match, metric
    return float(match.group(1))


def test_generation_metrics_and_statistics(server: str, client: openai.OpenAI) -> None:
    before = httpx.get(f"{server}/metrics", timeout=10).text
    answer = client.completions.create(
        model="tiny-llm", prompt="Tokens stream", max_tokens=5, temperature=0
    )
    assert answer.usage is not None
    after = httpx.get(f"{server}/metrics", timeout=10).text
    prompt = _sample(after, "vllm:prompt_tokens_total") - _sample(
        before, "vllm:prompt_tokens_total"
    )
    assert prompt == answer.usage.prompt_tokens
    made = _sample(after, "vllm:generation_tokens_total")
    assert made - _sample(before, "vllm:generation_tokens_total") >= answer.usage.completion_tokens
    ttft = "vllm:time_to_first_token_seconds_count"
    assert _sample(after, ttft) == _sample(before, ttft) + 1
    itl = "vllm:inter_token_latency_seconds_count"
    assert _sample(after, itl) - _sample(before, itl) >= answer.usage.completion_tokens - 1
    deadline = time.monotonic() + 30  # the engine counts its cache after the answer's last event
    while _sample(httpx.get(f"{server}/metrics", timeout=10).text, "vllm:kv_cache_usage_perc"):
        assert time.monotonic() < deadline, "the KV cache stayed in use with nothing running"
        time.sleep(0.01)
    stats = httpx.get(f"{server}/v2/models/tiny-llm/stats", timeout=10).json()["model_stats"][0]
    assert stats["prompt_tokens"] >= answer.usage.prompt_tokens
    assert stats["generation_tokens"] >= made
