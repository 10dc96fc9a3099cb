"""LLM traffic through ``ember up``: the OpenAI routes routed by the body's ``model``, token
streams relayed as they come, a client that leaves mid-stream freeing its sequence on the
replica, and the tokens in the event log and the metrics. The stack is examples/llm.yaml's: the
tiny LLM and MiniLM, both at zero."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.integration.test_activator import activator, events, wait_until
from tests.servers import ROOT, ServerProcess

_RUNNING = re.compile(r'^vllm:num_requests_running\{model_name="tiny-llm"\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stack's configs and its event log (events.jsonl)."""
    return tmp_path_factory.mktemp("llm-stack")


@pytest.fixture(scope="module")
def stack(tiny_llm_dir: Path, folder: Path) -> Iterator[ServerProcess]:
    """examples/llm.yaml with the tiny model built for this session and the event log here."""
    (folder / "tiny-llm").mkdir()
    shutil.copy(ROOT / "examples/tiny-llm/model.yaml", folder / "tiny-llm/model.yaml")
    shutil.copytree(tiny_llm_dir, folder / "tiny-llm/model")
    config = yaml.safe_load((ROOT / "examples/llm.yaml").read_text())
    config["activator"]["events"] = str(folder / "events.jsonl")
    config["activator"]["grace_period_s"] = 5
    for model in config["models"]:
        name = Path(model["config"]).parent.name
        model["config"] = str(
            folder / "tiny-llm/model.yaml"
            if name == "tiny-llm"
            else ROOT / "examples" / model["config"]
        )
    (folder / "ember.yaml").write_text(yaml.safe_dump(config))
    with activator(folder / "ember.yaml", env={"OMP_NUM_THREADS": "1"}) as server:
        yield server


def wait_for_event(folder: Path, check: Any, timeout_s: float = 10) -> dict[str, Any]:
    """The last event of the stack's log that passes ``check``, once there is one."""
    wait_until(lambda: any(check(e) for e in events(folder)), timeout_s, "such an event")
    return [e for e in events(folder) if check(e)][-1]


def test_models_listed_without_waking_any(stack: ServerProcess, folder: Path) -> None:
    for prefix in ("/v1", "/openai/v1"):
        listed = httpx.get(stack.url + prefix + "/models").json()
        assert listed["object"] == "list"
        assert sorted(m["id"] for m in listed["data"]) == ["minilm", "tiny-llm"]
    assert not [e for e in events(folder) if e["event"] == "replica_starting"]
    index = httpx.post(stack.url + "/v2/repository/index").json()
    assert {m["name"]: m["activator_state"] for m in index} == {
        "tiny-llm": "zero",
        "minilm": "zero",
    }


def test_a_streamed_chat_from_zero_then_embeddings(stack: ServerProcess, folder: Path) -> None:
    messages = [{"role": "user", "content": "hi, how are you?"}]
    with openai.OpenAI(base_url=stack.url + "/v1", api_key="-", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="tiny-llm",
            messages=messages,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        streamed, usage = "", None
        for chunk in stream:
            usage = chunk.usage or usage
            streamed += "".join(c.delta.content or "" for c in chunk.choices)
        whole = client.chat.completions.create(
            model="tiny-llm", messages=messages, max_tokens=10, temperature=0
        )
        assert streamed == whole.choices[0].message.content
        assert usage is not None and whole.usage is not None
        vectors = client.embeddings.create(model="minilm", input=["a cat", "a dog"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
    # the event log: the cold stream with its tokens and first event, the warm answer's tokens
    cold = wait_for_event(
        folder, lambda e: e["event"] == "request" and e.get("cold") and e["model"] == "tiny-llm"
    )
    assert cold["model"] == "tiny-llm" and cold["endpoint"] == "chat/completions"
    assert cold["prompt_tokens"] == usage.prompt_tokens
    assert cold["completion_tokens"] == usage.completion_tokens
    assert 0 < cold["ttft_s"] < 30
    warm = wait_for_event(
        folder, lambda e: e["event"] == "request" and not e.get("cold") and e["model"] == "tiny-llm"
    )
    assert warm["completion_tokens"] == whole.usage.completion_tokens
    embedded = wait_for_event(folder, lambda e: e["event"] == "request" and e["model"] == "minilm")
    assert embedded["endpoint"] == "embeddings" and embedded["prompt_tokens"] > 0
    metrics = httpx.get(stack.url + "/metrics").text
    assert re.search(
        r'^ember_activator_generation_tokens_total\{model="tiny-llm"\} [1-9]', metrics, re.M
    )
    assert re.search(
        r'^ember_activator_time_to_first_token_seconds_count\{model="tiny-llm"\} 1\.0$',
        metrics,
        re.M,
    )


def test_a_stream_whose_client_asked_no_usage_is_booked_with_its_tokens(
    stack: ServerProcess, folder: Path
) -> None:
    body = {"model": "tiny-llm", "prompt": "Hello", "max_tokens": 5, "stream": True}
    body["temperature"] = 0
    with httpx.stream("POST", stack.url + "/v1/completions", json=body, timeout=60) as r:
        raw = b"".join(r.iter_bytes())
    assert raw.endswith(b"data: [DONE]\n\n") and b"usage" not in raw  # as the client asked
    event = wait_for_event(
        folder, lambda e: e["event"] == "request" and e["endpoint"] == "completions"
    )
    assert event["completion_tokens"] >= 1 and event["prompt_tokens"] >= 1


def test_openai_errors_from_the_activator(stack: ServerProcess) -> None:
    url = stack.url
    r = httpx.post(url + "/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "model"
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url + "/v1/chat/completions", json={"model": "nope", "messages": []})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url + "/openai/v1/completions", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.get(url + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.post(url + "/v1/nothing", json={"model": "tiny-llm"})
    assert r.status_code == 404 and isinstance(r.json()["error"], dict)


def test_the_generate_extension_routes_by_path(stack: ServerProcess) -> None:
    body = {"text_input": "Hello", "max_tokens": 6, "temperature": 0}
    r = httpx.post(stack.url + "/v2/models/tiny-llm/generate", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["model_name"] == "tiny-llm"
    with httpx.stream(
        "POST", stack.url + "/v2/models/tiny-llm/generate_stream", json=body, timeout=60
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        parts = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    assert (
        "".join(p["text_output"] for p in parts)
        == httpx.post(stack.url + "/v2/models/tiny-llm/generate", json=body, timeout=60).json()[
            "text_output"
        ]
    )


def test_a_client_that_leaves_mid_stream_frees_its_sequence(
    stack: ServerProcess, folder: Path
) -> None:
    body = {"model": "tiny-llm", "prompt": "Hello", "max_tokens": 4000, "stream": True}
    with httpx.stream("POST", stack.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        ready = wait_for_event(
            folder, lambda e: e["event"] == "replica_ready" and e["model"] == "tiny-llm"
        )
        assert _running(ready["url"]) == 1
        left = time.monotonic()
    # the activator closes its connection to the replica, which aborts the sequence
    while _running(ready["url"]) != 0:
        assert time.monotonic() - left < 1.0, "the sequence still runs 1 s after its client left"
        time.sleep(0.02)
    gone = wait_for_event(folder, lambda e: e["event"] == "request" and e["status"] == 499)
    assert gone["model"] == "tiny-llm" and gone["endpoint"] == "completions"


def _running(replica: str) -> float:
    found = _RUNNING.search(httpx.get(replica + "/metrics").text)
    assert found is not None
    return float(found.group(1))
