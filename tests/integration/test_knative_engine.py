"""A command engine on Knative, against the loopback fake of the Kubernetes API: the pod
``ember deploy`` renders for it, run as a kubelet would, behind a woken service.

The "kubelet" gives each of the pod's volumes a folder and each mount path that folder, runs
the init container's arguments with the ``ember`` CLI (the runtime image's entrypoint), which
pulls the model from a real S3-compatible server into the tier and links it, then the engine
container's command (a small OpenAI-compatible server, tests/fixtures/fake_engine.py, standing
in for vLLM), with the pod's port on a free loopback one. The activator's Knative scaler waits for
the engine's health path, learns the name it answers to from ``/v1/models`` and asks nothing of
v2. No real cluster is involved (none can run here).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from activator.errors import ReplicaStartFailed, StartFailure
from activator.scalers.knative import KnativeScaler
from contracts.stack import ModelSpec, load_stack
from knative.render import render
from tests.conftest import make_model_dir
from tests.fake_knative import FakeKnative, write_kubeconfig
from tests.fixtures.frontdoor import until
from tests.integration.test_activator import events, wait_until
from tests.integration.test_knative_scaler import client
from tests.servers import ROOT, ServerProcess

ENGINE = [sys.executable, "-m", "tests.fixtures.fake_engine", "{weights}"]
ENGINE += ["--host", "{host}", "--port", "{port}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pod:
    """A rendered Knative Service's pod, run here: volumes are folders under ``root``."""

    def __init__(self, ksvc: dict[str, Any], root: Path) -> None:
        self.spec = ksvc["spec"]["template"]["spec"]
        self.root = root
        self.asked: list[str] = []  # what the engine was asked, "GET /health", ...
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def _mounted(self, container: dict[str, Any]) -> Callable[[str], str]:
        """An argument with a mount path in it made the folder of that mount's volume."""
        mounts = {m["mountPath"]: self.root / m["name"] for m in container["volumeMounts"]}

        def path(arg: str) -> str:
            for at in sorted(mounts, key=len, reverse=True):
                if arg == at or arg.startswith(at + "/"):
                    return str(mounts[at]) + arg[len(at) :]
            return arg

        return path

    def start(self) -> str:
        for volume in self.spec["volumes"]:
            (self.root / volume["name"]).mkdir(parents=True, exist_ok=True)
        (fill,) = self.spec["initContainers"]
        path = self._mounted(fill)
        env = {**os.environ}
        env.update({e["name"]: path(e["value"]) for e in fill["env"] if "value" in e})
        done = subprocess.run(
            [sys.executable, "-m", "ember", *map(path, fill["args"])],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
        )
        assert done.returncode == 0, f"the init container failed: {done.stderr}"
        (engine,) = self.spec["containers"]
        path = self._mounted(engine)
        pod_port = str(engine["ports"][0]["containerPort"])
        port = free_port()  # the pod's own port, here on loopback
        command = [str(port) if a == pod_port else path(a) for a in engine["command"]]
        command = ["127.0.0.1" if a == "0.0.0.0" else a for a in command]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return f"http://127.0.0.1:{port}"

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.asked.append(line.strip())

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        assert self._reader is not None and self.proc.stdout is not None
        self._reader.join(10)
        self.proc.stdout.close()


@pytest.fixture
def deployed(tmp_path: Path, bucket: str) -> Path:
    """A stack with one command engine whose weights were pushed to S3 (scaler: knative)."""
    source = make_model_dir(tmp_path / "weights", mb=0.2)
    uri = f"s3://{bucket}/llm"
    pushed = subprocess.run(
        [sys.executable, "-m", "ember", "cache", "push", str(source), uri],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert pushed.returncode == 0, pushed.stderr
    model = {
        "name": "llm",
        "engine": "command",
        "source": uri,
        "image": "registry.example.com/fake-engine:1",
        "command": ENGINE,
    }
    (tmp_path / "llm.yaml").write_text(yaml.safe_dump(model))
    stack = {
        "activator": {
            "events": str(tmp_path / "events.jsonl"),
            "scaler": "knative",
            "keep_alive_s": 1,
            "grace_period_s": 5,
        },
        "knative": {
            "namespace": "ember",
            "image": "registry.example.com/ember/runtime-cpu:1",
            "activator_image": "registry.example.com/ember/activator:1",
        },
        "models": [{"config": "llm.yaml"}],
    }
    (tmp_path / "ember.yaml").write_text(yaml.safe_dump(stack))
    return tmp_path / "ember.yaml"


@pytest.fixture
def fake(tmp_path: Path, deployed: Path) -> Iterator[tuple[FakeKnative, list[Pod]]]:
    """The fake API whose woken ``llm`` runs the rendered pod."""
    (ksvc,) = [
        o for o in render(load_stack(deployed)) if o["apiVersion"] == "serving.knative.dev/v1"
    ]
    pods: list[Pod] = []

    def backend(name: str) -> tuple[str, Callable[[], None]]:
        pods.append(Pod(ksvc, tmp_path / f"pod{len(pods)}"))
        return pods[-1].start(), pods[-1].stop

    knative = FakeKnative(backend).start()
    knative.add_service("ember", "llm")
    yield knative, pods
    knative.stop()


@pytest.fixture
async def scaler(
    tmp_path: Path, fake: tuple[FakeKnative, list[Pod]]
) -> AsyncIterator[KnativeScaler]:
    made = KnativeScaler(client(tmp_path, fake[0].url), poll_s=0.05)
    yield made
    await made.aclose()


def engine_spec(deployed: Path) -> ModelSpec:
    return load_stack(deployed).models["llm"]


async def test_the_scaler_waits_for_the_engines_health_and_learns_its_name(
    deployed: Path, fake: tuple[FakeKnative, list[Pod]], scaler: KnativeScaler
) -> None:
    knative, pods = fake
    spec = engine_spec(deployed)
    assert (spec.engine, spec.health) == ("command", "/health")
    handle = await scaler.start(spec)
    await scaler.wait_ready(handle, 120)
    (pod,) = pods
    link = pod.root / "weights-link" / "weights"  # {weights}: the link the init container made
    assert link.is_symlink() and (link / "config.json").is_file()
    assert link.resolve().parent == (pod.root / "weight-tier" / "entries").resolve()
    assert handle.served_as == str(link)  # what its /v1/models lists: requests are renamed
    assert await scaler.healthy(handle)
    assert [report async for report in scaler.statuses(handle)] == []  # it has no index
    assert "GET /health" in pod.asked and "GET /v1/models" in pod.asked
    assert not [line for line in pod.asked if " /v2/" in line]  # nothing asked of v2
    assert knative.index_reads["llm"] == 0
    await scaler.stop(handle, 0)
    assert knative.min_scales("llm") == ["1", "0"]
    wait_until(lambda: "llm" not in knative.running, 30, "the pod to go")


async def test_an_engine_that_never_answers_its_health_path_times_out_saying_so(
    tmp_path: Path, deployed: Path
) -> None:
    config = tmp_path / "llm.yaml"
    model = yaml.safe_load(config.read_text())
    model["command"] = [*ENGINE, "--unhealthy-for", "600"]
    config.write_text(yaml.safe_dump(model))
    (ksvc,) = [
        o for o in render(load_stack(deployed)) if o["apiVersion"] == "serving.knative.dev/v1"
    ]
    pod = Pod(ksvc, tmp_path / "pod")
    knative = FakeKnative(lambda name: (pod.start(), pod.stop)).start()
    try:
        knative.add_service("ember", "llm")
        scaler = KnativeScaler(client(tmp_path, knative.url), poll_s=0.05)
        handle = await scaler.start(engine_spec(deployed))
        await until(lambda: pod.proc is not None, "the engine's command to start", 120)
        with pytest.raises(ReplicaStartFailed) as caught:
            await scaler.wait_ready(handle, 3)
        await scaler.aclose()
    finally:
        knative.stop()
    assert caught.value.kind is StartFailure.TIMED_OUT
    assert "not ready within 3s (its engine's /health did not answer 200)" in str(caught.value)
    assert "GET /health" in pod.asked and "GET /v1/models" not in pod.asked


def test_a_request_through_ember_up_wakes_the_engine_and_is_renamed_for_it(
    tmp_path: Path, deployed: Path, fake: tuple[FakeKnative, list[Pod]]
) -> None:
    knative, pods = fake
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", knative.url)
    server = ServerProcess(deployed, command="up", env={"KUBECONFIG": str(kubeconfig)})
    try:
        server.wait_ready(timeout_s=30)
        body = {"model": "llm", "prompt": "Hello", "max_tokens": 1}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        (pod,) = pods
        assert r.json()["model"] == str(pod.root / "weights-link" / "weights")
        assert knative.min_scales("llm")[0] == "1"
        wait_until(lambda: knative.min_scales("llm")[-1:] == ["0"], 30, "min-scale back to 0")
    finally:
        assert server.terminate() == 0
    assert any(e["event"] == "replica_ready" for e in events(tmp_path))
    assert not [line for line in pods[0].asked if " /v2/" in line]
