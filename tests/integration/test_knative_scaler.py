"""``ember up`` with ``scaler: knative`` against a loopback fake of the Kubernetes API.

The fake (tests/fake_knative.py) serves exactly the calls the scaler makes; behind a woken
service stands a real ``ember serve`` process, so requests go all the way through. No real cluster
is involved (none can run here).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import slow_model
from tests.fake_knative import FakeKnative, write_kubeconfig
from tests.integration.test_activator import BODY, events, state, wait_until
from tests.servers import ServerProcess


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeKnative]:
    config = slow_model(tmp_path)

    def backend(name: str) -> tuple[str, Callable[[], None]]:
        server = ServerProcess(config)
        server.wait_ready()
        return server.url, lambda: server.terminate()

    knative = FakeKnative(backend).start()
    knative.add_service("ember", "slow")
    yield knative
    knative.stop()


def knative_stack(tmp_path: Path, fake: FakeKnative) -> tuple[Path, dict[str, str]]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake.url)
    stack = {
        "activator": {
            "events": str(tmp_path / "events.jsonl"),
            "scaler": "knative",
            "keep_alive_s": 1,
            "grace_period_s": 5,
        },
        "knative": {"namespace": "ember"},
        "models": [{"config": str(tmp_path / "slow.json"), "max_replicas": 2}],
    }
    path = tmp_path / "ember.yaml"
    path.write_text(yaml.safe_dump(stack))
    return path, {"KUBECONFIG": str(kubeconfig)}


def test_a_request_wakes_the_ksvc_through_min_scale_and_keep_alive_lowers_it(
    tmp_path: Path, fake: FakeKnative
) -> None:
    config, env = knative_stack(tmp_path, fake)
    server = ServerProcess(config, command="up", env=env)
    try:
        server.wait_ready(timeout_s=30)
        r = httpx.post(server.url + "/v2/models/slow/infer", content=BODY, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [6.0]
        assert fake.min_scales("slow") == ["1"]
        assert "slow" in fake.running
        wait_until(lambda: fake.min_scales("slow") == ["1", "0"], 30, "min-scale back to 0")
        wait_until(lambda: "slow" not in fake.running, 30, "the pod to go")
        assert state(server, "slow") == "zero"
    finally:
        assert server.terminate() == 0
    assert any(e["event"] == "replica_ready" for e in events(tmp_path))
    calls = {(method, path.rsplit("/", 3)[-3]) for method, path, _ in fake.requests}
    assert calls <= {("GET", "ember"), ("PATCH", "ember")}  # only its own namespace, two verbs


def test_knative_failing_the_revision_fails_the_waiters_with_its_reason(
    tmp_path: Path, fake: FakeKnative
) -> None:
    fake.fail_on_wake("slow", "RevisionFailed", "image registry.example.com/x: not found")
    config, env = knative_stack(tmp_path, fake)
    server = ServerProcess(config, command="up", env=env)
    try:
        server.wait_ready(timeout_s=30)
        r = httpx.post(server.url + "/v2/models/slow/infer", content=BODY, timeout=60)
        assert r.status_code == 503
        assert "RevisionFailed: image registry.example.com/x: not found" in r.json()["error"]
        index = httpx.post(server.url + "/v2/repository/index").json()
        assert "RevisionFailed" in index[0]["reason"]
    finally:
        server.terminate()


def test_a_missing_ksvc_says_to_deploy(tmp_path: Path, fake: FakeKnative) -> None:
    config, env = knative_stack(tmp_path, fake)
    data = yaml.safe_load(config.read_text())
    data["knative"]["namespace"] = "elsewhere"
    config.write_text(yaml.safe_dump(data))
    server = ServerProcess(config, command="up", env=env)
    try:
        server.wait_ready(timeout_s=30)
        r = httpx.post(server.url + "/v2/models/slow/infer", content=BODY, timeout=60)
        assert r.status_code == 503 and "ember deploy" in r.json()["error"], r.text
    finally:
        server.terminate()
    assert json.loads(json.dumps(fake.requests[-1]))[0] == "PATCH"
