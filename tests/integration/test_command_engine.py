"""``engine: command``: another OpenAI-compatible server (``transformers serve``) as a model's
replica behind ``ember up``: its weights pulled from S3 into the tier first, started at the
first request, the requests renamed to what it answers to, their tokens booked, and back to
zero after the keep-alive."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.test_activator import activator, events, wait_until
from tests.servers import ROOT

TRANSFORMERS = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
SERVE = [TRANSFORMERS, "serve", "{weights}", "--host", "{host}", "--port", "{port}"]


def write_stack(tmp_path: Path, model: dict[str, Any], **settings: Any) -> Path:
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    stack = {
        "activator": {
            "events": str(tmp_path / "events.jsonl"),
            "cache_dir": str(tmp_path / "tier"),
            "grace_period_s": 5,
            **settings,
        },
        "models": [{"config": "model.yaml", "max_replicas": 1}],
    }
    (tmp_path / "ember.yaml").write_text(yaml.safe_dump(stack))
    return tmp_path / "ember.yaml"


def test_a_third_party_server_scales_from_zero_and_back(
    tmp_path: Path, tiny_llm_dir: Path, bucket: str
) -> None:
    uri = f"s3://{bucket}/tiny-llm"
    pushed = subprocess.run(
        [sys.executable, "-m", "ember", "cache", "push", str(tiny_llm_dir), uri],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert pushed.returncode == 0, pushed.stderr
    model = {"name": "tiny", "engine": "command", "source": uri, "command": SERVE}
    config = write_stack(tmp_path, model, keep_alive_s=2)
    with activator(config, env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}) as server:
        assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == ["tiny"]
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["usage"]["completion_tokens"] == 4
        # the server answers to its weights' path (it is pinned to it): in the tier, not S3
        assert answer["model"].startswith(str(tmp_path / "tier"))
        assert list(Path(answer["model"]).glob("*.safetensors"))
        with httpx.stream(
            "POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60
        ) as s:
            chunks = [x for x in s.iter_lines() if x.startswith("data: ")]
        texts = [c["text"] for x in chunks for c in json.loads(x[6:]).get("choices", [])]
        assert "".join(texts) == answer["choices"][0]["text"]

        def requests() -> list[dict[str, Any]]:
            return [e for e in events(tmp_path) if e["event"] == "request"]

        wait_until(lambda: len(requests()) >= 2, 60, "two requests")
        booked = requests()[1:]  # the stream's
        assert booked[0]["completion_tokens"] == 4 and booked[0]["status"] == 200

        # idle past its keep-alive: the replica (and the server it started) goes
        def stopped() -> list[dict[str, Any]]:
            return [e for e in events(tmp_path) if e["event"] == "replica_stopped"]

        wait_until(lambda: bool(stopped()), 60, "zero")
        assert stopped()[0]["model"] == "tiny"
    assert not subprocess.run(["pgrep", "-f", str(tmp_path / "tier")], capture_output=True).stdout


def embers_own_server(tmp_path: Path, tiny_llm_dir: Path, **keys: Any) -> dict[str, Any]:
    """A model ``outer`` whose command is ``ember serve`` of the tiny LLM (``inner-llm``)."""
    inner = tmp_path / "inner.yaml"
    inner.write_text(f"name: inner-llm\nhandler: text-generation\nsource: {tiny_llm_dir}\n")
    serve = [sys.executable, "-m", "ember", "serve", "--config", str(inner)]
    return {
        "name": "outer",
        "engine": "command",
        "command": [*serve, "--host", "{host}", "--port", "{port}"],
        "health": "/v2/health/ready",
        **keys,
    }


def test_embers_own_server_given_as_a_command(tmp_path: Path, tiny_llm_dir: Path) -> None:
    model = embers_own_server(tmp_path, tiny_llm_dir)
    with activator(write_stack(tmp_path, model), env={"OMP_NUM_THREADS": "1"}) as server:
        body = {"model": "outer", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "inner-llm"  # renamed to what the inner server serves


def test_a_command_that_dies_before_it_is_healthy_answers_503_with_why(tmp_path: Path) -> None:
    model = {
        "name": "broken",
        "engine": "command",
        "command": [sys.executable, "-c", "import sys; sys.exit(7)", "{port}"],
    }
    with activator(write_stack(tmp_path, model)) as server:
        body = {"model": "broken", "prompt": "Hello"}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 503
    assert "exited with status 7 before /health answered 200" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "m", "engine": "command"}, "needs the 'command'"),
        ({"name": "m", "engine": "command", "command": ["x", "{nope}"]}, "unknown placeholder"),
        ({"name": "m", "engine": "command", "command": ["x"], "health": "up"}, "must be a path"),
        (
            {"name": "m", "engine": "command", "command": ["x"], "handler": "text-generation"},
            "has no 'handler'",
        ),
        ({"name": "m"}, "'handler' is required"),
    ],
)
def test_bad_command_configs_are_refused(
    tmp_path: Path, model: dict[str, Any], message: str
) -> None:
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    out = subprocess.run(
        [sys.executable, "-m", "ember", "serve", "--config", str(tmp_path / "model.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_a_command_engine_alone_in_a_tiered_group_sleeps_and_wakes_through_its_calls(
    tmp_path: Path, tiny_llm_dir: Path
) -> None:
    """Ember's own server as the command engine, answering vLLM's sleep-mode calls: the tiered
    policy puts it to sleep at host, then disk, through them, and a stream wakes it first."""
    model = embers_own_server(
        tmp_path,
        tiny_llm_dir,
        sleep={"host": "POST /sleep?level=1", "disk": "POST /sleep?level=2"},
        wake="POST /wake_up",
    )
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    group = {
        "name": "solo",
        "models": [{"config": "model.yaml"}],
        "policy": "tiered",
        # hot for 1.2 s (1,200 device-seconds per second of wake), at host for 1 s, then disk
        "wake": {"host": 0.001, "disk": 0.002},
        "host_hold_s": 1,
        "disk_hold_s": 600,
    }
    settings = {"events": str(tmp_path / "events.jsonl"), "grace_period_s": 5}
    stack = tmp_path / "ember.yaml"
    stack.write_text(yaml.safe_dump({"activator": settings, "groups": [group]}))

    def logged(kind: str) -> list[dict[str, Any]]:
        return [e for e in events(tmp_path) if e["event"] == kind]

    with activator(stack, env={"OMP_NUM_THREADS": "1"}) as server:
        chat = {"model": "outer", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        r = httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=120)
        assert r.status_code == 200, r.text
        wait_until(lambda: len(logged("sleep")) >= 2, 60, "sleeps at host, then disk")
        assert [(e["model"], e["level"]) for e in logged("sleep")] == [
            ("outer", "host"),
            ("outer", "disk"),
        ]
        assert all("tiered policy" in e["reason"] for e in logged("sleep"))
        (ready,) = logged("replica_ready")
        replica = str(ready["url"])  # the command's server: Ember's, on the tiny model
        assert httpx.get(replica + "/is_sleeping").json() == {"is_sleeping": True}
        assert logged("wake") == []

        with httpx.stream(
            "POST", server.url + "/v1/chat/completions", json={**chat, "stream": True}, timeout=120
        ) as s:
            assert s.status_code == 200
            lines = [x for x in s.iter_lines() if x.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        deltas = [json.loads(x[6:])["choices"] for x in lines[:-1]]
        assert any(c and c[0]["delta"].get("content") for c in deltas)
        wait_until(lambda: bool(logged("wake")), 30, "the wake's event")
        (wake,) = logged("wake")
        assert wake["model"] == "outer" and wake["level"] == "disk"
        assert wake["group"] == "solo" and wake["wake_s"] > 0
        # measured by the activator around its wake call (the request came after it)
        assert httpx.get(replica + "/is_sleeping").json() == {"is_sleeping": False}
        described = {m["name"]: m for m in httpx.get(server.url + "/admin/models").json()}
        assert set(described["outer"]["levels"].values()) == {"hot"}
