"""``ember up`` with ``scaler: knative`` against a loopback fake of the Kubernetes API.

The fake (tests/fake_knative.py) serves exactly the calls the scaler makes; behind a woken
service stands a real ``ember serve`` process, so requests go all the way through. No real cluster
is involved (none can run here). The last tests drive the scaler itself, for the kind of each
way a start fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from activator.errors import ReplicaStartFailed, StartFailure
from activator.scalers.knative import KnativeScaler
from contracts.replica import FailureKind
from contracts.stack import ModelSpec
from knative.client import KnativeClient
from knative.errors import KnativeApiError, ServiceNotFound
from tests.conftest import slow_model
from tests.fake_knative import FakeKnative, index_entry, write_kubeconfig
from tests.fixtures.frontdoor import until
from tests.fixtures.specs import model_spec
from tests.integration.test_activator import BODY, events, state, wait_until
from tests.servers import ROOT, ServerProcess


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


@pytest.fixture
def failing_fake(tmp_path: Path) -> Iterator[FakeKnative]:
    """Behind the service, an ``ember serve`` whose model has no weights file: it listens (so
    Knative gives the service its URL), says its model is UNAVAILABLE and stays up
    (``--stay-on-load-failure``: its index is what the scaler reads)."""
    config = slow_model(tmp_path)
    (tmp_path / "weights" / "model.safetensors").unlink()

    def backend(name: str) -> tuple[str, Callable[[], None]]:
        server = ServerProcess(config, "--stay-on-load-failure")
        return server.url, lambda: server.terminate()

    knative = FakeKnative(backend).start()
    knative.add_service("ember", "slow")
    yield knative
    knative.stop()


def knative_stack(
    tmp_path: Path, fake: FakeKnative, startup_timeout_s: float = 300
) -> tuple[Path, dict[str, str]]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake.url)
    stack = {
        "activator": {
            "events": str(tmp_path / "events.jsonl"),
            "scaler": "knative",
            "keep_alive_s": 1,
            "grace_period_s": 5,
            "startup_timeout_s": startup_timeout_s,
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


def refused_in_seconds(server: ServerProcess) -> str:
    """A request through ``ember up`` answered 503 well before the startup timeout; its error."""
    sent = time.monotonic()
    r = httpx.post(server.url + "/v2/models/slow/infer", content=BODY, timeout=200)
    assert r.status_code == 503, r.text
    # the startup timeout is 300 s; the failing pod's own start (an interpreter importing torch)
    # takes seconds, more on a loaded machine
    assert time.monotonic() - sent < 120, "it waited for the startup timeout"
    error: str = r.json()["error"]
    return error


def test_a_model_that_cannot_load_fails_the_wake_in_seconds_with_why(
    tmp_path: Path, failing_fake: FakeKnative
) -> None:
    config, env = knative_stack(tmp_path, failing_fake, startup_timeout_s=300)
    missing = tmp_path / "weights" / "model.safetensors"
    server = ServerProcess(config, command="up", env=env)
    try:
        server.wait_ready(timeout_s=30)
        assert f"weights file {missing} does not exist" in refused_in_seconds(server)
        (entry,) = httpx.post(server.url + "/v2/repository/index").json()
        assert f"weights file {missing} does not exist" in entry["reason"]
        # the failed start gives the pod back
        wait_until(lambda: failing_fake.min_scales("slow") == ["1", "0"], 30, "min-scale 0")
    finally:
        server.terminate()


@pytest.fixture
def exiting_fake(tmp_path: Path) -> Iterator[FakeKnative]:
    """As on a cluster: behind the service, the rendered container's ``ember serve
    --exit-on-load-failure`` on a model with no weights file. Knative routes nothing to a pod
    that is not ready, so its URL answers nothing; a "kubelet" thread reports the container's
    exit and its termination message, which Knative turns into ``Ready=False``."""
    config = slow_model(tmp_path)
    (tmp_path / "weights" / "model.safetensors").unlink()
    termination_log = tmp_path / "termination-log"

    def backend(name: str) -> tuple[str, Callable[[], None]]:
        server = ServerProcess(
            config, "--exit-on-load-failure", "--termination-log", str(termination_log)
        )

        def kubelet() -> None:
            code = server.proc.wait()
            if code != 0:
                message = termination_log.read_text() if termination_log.exists() else ""
                knative.container_exited("ember", name, code, message or server.output[-2048:])

        threading.Thread(target=kubelet, daemon=True).start()
        return "http://127.0.0.1:9", lambda: server.terminate()  # nothing routed to it

    knative = FakeKnative(backend).start()
    knative.add_service("ember", "slow")
    yield knative
    knative.stop()


def test_a_container_that_exits_on_a_failed_load_fails_the_wake_with_its_message(
    tmp_path: Path, exiting_fake: FakeKnative
) -> None:
    config, env = knative_stack(tmp_path, exiting_fake, startup_timeout_s=300)
    missing = tmp_path / "weights" / "model.safetensors"
    server = ServerProcess(config, command="up", env=env)
    try:
        server.wait_ready(timeout_s=30)
        expected = (
            "ExitCode3: Container failed with: model 'slow' could not load (weights_missing): "
            f"weights file {missing} does not exist"
        )
        assert expected in refused_in_seconds(server)
        wait_until(lambda: exiting_fake.min_scales("slow") == ["1", "0"], 30, "min-scale 0")
    finally:
        server.terminate()


# ----------------------------------------------------------------------------- the scaler itself
def slow_spec(tmp_path: Path) -> ModelSpec:
    return model_spec(
        name="slow",
        config_path=tmp_path / "slow.json",
        container_concurrency=1,
        target=1.0,
        keep_alive_s=1.0,
        queue_size=1,
        deadline_s=30.0,
        startup_timeout_s=300.0,
    )


def client(tmp_path: Path, url: str, namespace: str = "ember") -> KnativeClient:
    from kubernetes import client as k8s
    from kubernetes import config

    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
    api = config.new_client_from_config(str(kubeconfig), persist_config=False)  # type: ignore[no-untyped-call]
    return KnativeClient(namespace, k8s.CustomObjectsApi(api), timeout_s=5)


@pytest.fixture
async def scaler_of(tmp_path: Path) -> AsyncIterator[Callable[[FakeKnative], KnativeScaler]]:
    made: list[KnativeScaler] = []

    def make(fake: FakeKnative) -> KnativeScaler:
        made.append(KnativeScaler(client(tmp_path, fake.url), poll_s=0.05))
        return made[-1]

    yield make
    for scaler in made:
        await scaler.aclose()


async def test_a_failed_load_is_load_failed_with_the_replicas_kind_and_reason(
    tmp_path: Path, failing_fake: FakeKnative, scaler_of: Callable[[FakeKnative], KnativeScaler]
) -> None:
    scaler = scaler_of(failing_fake)
    handle = await scaler.start(slow_spec(tmp_path))
    with pytest.raises(ReplicaStartFailed) as caught:
        await scaler.wait_ready(handle, 300)
    assert caught.value.kind is StartFailure.LOAD_FAILED
    assert caught.value.failure is FailureKind.WEIGHTS_MISSING
    assert "model.safetensors does not exist" in str(caught.value)
    await scaler.stop(handle, 0)


async def test_ready_false_is_platform_with_knatives_reason(
    tmp_path: Path, scaler_of: Callable[[FakeKnative], KnativeScaler]
) -> None:
    fake = FakeKnative().start()
    try:
        fake.add_service("ember", "slow")
        fake.fail_on_wake("slow", "RevisionFailed", "image x: not found")
        scaler = scaler_of(fake)
        handle = await scaler.start(slow_spec(tmp_path))
        with pytest.raises(ReplicaStartFailed) as caught:
            await scaler.wait_ready(handle, 30)
    finally:
        fake.stop()
    assert caught.value.kind is StartFailure.PLATFORM and caught.value.failure is None
    assert "Knative says RevisionFailed: image x: not found" in str(caught.value)


async def test_a_service_that_never_answers_is_timed_out(
    tmp_path: Path, scaler_of: Callable[[FakeKnative], KnativeScaler]
) -> None:
    fake = FakeKnative(lambda name: ("http://127.0.0.1:9", lambda: None)).start()  # discard
    try:
        fake.add_service("ember", "slow")
        scaler = scaler_of(fake)
        handle = await scaler.start(slow_spec(tmp_path))
        with pytest.raises(ReplicaStartFailed) as caught:
            await scaler.wait_ready(handle, 0.5)
    finally:
        fake.stop()
    assert caught.value.kind is StartFailure.TIMED_OUT
    assert "not ready within 0.5s" in str(caught.value)


async def test_a_missing_service_and_an_unreachable_api_are_platform(tmp_path: Path) -> None:
    fake = FakeKnative().start()
    try:
        api = client(tmp_path, fake.url)
        with pytest.raises(ServiceNotFound) as missing:
            await api.get_service("slow")
        assert missing.value.status == 404
        scaler = KnativeScaler(api)
        with pytest.raises(ReplicaStartFailed) as caught:
            await scaler.start(slow_spec(tmp_path))
        assert caught.value.kind is StartFailure.PLATFORM
        assert "ember/slow does not exist (run `ember deploy`)" in str(caught.value)
        await scaler.aclose()
    finally:
        fake.stop()
    gone = client(tmp_path, fake.url)  # nothing listens there now
    with pytest.raises(KnativeApiError) as unreachable:
        await gone.get_service("slow")
    assert unreachable.value.status is None and not isinstance(unreachable.value, ServiceNotFound)
    scaler = KnativeScaler(gone)
    with pytest.raises(ReplicaStartFailed) as caught:
        await scaler.start(slow_spec(tmp_path))
    assert caught.value.kind is StartFailure.PLATFORM
    assert "cannot reach the Kubernetes API" in str(caught.value)
    await scaler.aclose()


# ------------------------------------------------------------------ a group's generic replica
def group_spec(tmp_path: Path) -> ModelSpec:
    """A group's pool spec, as contracts.stack resolves it: named after the group."""
    return slow_spec(tmp_path).model_copy(
        update={
            "name": "shared",
            "members": ("a", "b"),
            "configs": (tmp_path / "a.yaml", tmp_path / "b.yaml"),
            "device_memory_budget": 95_000_000,
        }
    )


@pytest.fixture
def stub_fake() -> Iterator[FakeKnative]:
    """A fake whose woken services' replicas are stubs answering the index the test sets."""
    knative = FakeKnative().start()
    knative.add_service("ember", "shared")
    knative.add_service("ember", "slow")
    yield knative
    knative.stop()


async def test_a_group_wakes_its_own_service_and_is_ready_when_every_member_can_answer(
    tmp_path: Path, stub_fake: FakeKnative, scaler_of: Callable[[FakeKnative], KnativeScaler]
) -> None:
    scaler = scaler_of(stub_fake)
    # on demand: a member not loaded yet is SLEEPING (at disk), and a request wakes it
    stub_fake.index["shared"] = [
        index_entry("a", "SLEEPING", "level disk (not loaded yet)"),
        index_entry("b", "LOADING"),
    ]
    handle = await scaler.start(group_spec(tmp_path))
    assert handle.model == "shared" and stub_fake.min_scales("shared") == ["1"]
    waiting = asyncio.create_task(scaler.wait_ready(handle, 30))
    await until(lambda: stub_fake.index_reads["shared"] >= 3, "the replica asked thrice", 30)
    assert not waiting.done()  # b is still loading
    stub_fake.index["shared"][1] = index_entry("b", "READY")
    await asyncio.wait_for(waiting, 30)
    assert handle.url.endswith("/replicas/shared")
    await scaler.stop(handle, 0)
    assert stub_fake.min_scales("shared") == ["1", "0"]
    patched = {
        path.rsplit("/", 1)[-1] for method, path, _ in stub_fake.requests if method == "PATCH"
    }
    assert patched == {"shared"}  # the members have no Service of their own


async def test_a_group_waits_for_a_member_its_replica_does_not_list_yet(
    tmp_path: Path, stub_fake: FakeKnative, scaler_of: Callable[[FakeKnative], KnativeScaler]
) -> None:
    scaler = scaler_of(stub_fake)
    stub_fake.index["shared"] = [index_entry("a", "READY")]
    handle = await scaler.start(group_spec(tmp_path))
    with pytest.raises(ReplicaStartFailed) as caught:
        await scaler.wait_ready(handle, 0.5)
    assert caught.value.kind is StartFailure.TIMED_OUT
    assert "not ready within 0.5s (waiting for b (not listed))" in str(caught.value)


async def test_a_member_that_cannot_load_leaves_the_group_serving_the_others(
    tmp_path: Path, stub_fake: FakeKnative, scaler_of: Callable[[FakeKnative], KnativeScaler]
) -> None:
    scaler = scaler_of(stub_fake)
    broken = index_entry(
        "b", "UNAVAILABLE", "weights file /w/b.safetensors does not exist", "weights_missing"
    )
    stub_fake.index["shared"] = [
        index_entry("a", "SLEEPING", "level disk (not loaded yet)"),
        broken,
    ]
    handle = await scaler.start(group_spec(tmp_path))
    await scaler.wait_ready(handle, 300)  # a serves; b answers its requests with why


async def test_a_group_whose_members_all_fail_fails_its_start_with_why(
    tmp_path: Path, stub_fake: FakeKnative, scaler_of: Callable[[FakeKnative], KnativeScaler]
) -> None:
    scaler = scaler_of(stub_fake)
    stub_fake.index["shared"] = [
        index_entry("a", "UNAVAILABLE", "a checksum does not match", "weights_corrupt"),
        index_entry(
            "b", "UNAVAILABLE", "weights file /w/b.safetensors does not exist", "weights_missing"
        ),
    ]
    handle = await scaler.start(group_spec(tmp_path))
    with pytest.raises(ReplicaStartFailed) as caught:
        await scaler.wait_ready(handle, 300)
    assert caught.value.kind is StartFailure.LOAD_FAILED
    assert caught.value.failure is FailureKind.WEIGHTS_CORRUPT
    assert "cannot load any of its models: a: a checksum does not match; b: weights file" in str(
        caught.value
    )


async def test_a_real_generic_replica_is_ready_before_any_member_loads(
    tmp_path: Path, scaler_of: Callable[[FakeKnative], KnativeScaler]
) -> None:
    """Behind the group's service, ``ember serve`` as the rendered container runs it: one
    --config per member and --load-on-demand; its index says both members are SLEEPING."""
    a = slow_model(tmp_path)
    b = tmp_path / "b.json"
    b.write_text(a.read_text().replace('"slow"', '"b"'))
    servers: list[ServerProcess] = []

    def backend(name: str) -> tuple[str, Callable[[], None]]:
        servers.append(ServerProcess(a, "--config", str(b), "--load-on-demand"))
        return servers[-1].url, lambda: None

    fake = FakeKnative(backend).start()
    try:
        fake.add_service("ember", "shared")
        scaler = scaler_of(fake)
        spec = group_spec(tmp_path).model_copy(update={"members": ("slow", "b")})
        handle = await scaler.start(spec)
        await scaler.wait_ready(handle, 60)
        async with httpx.AsyncClient() as http:
            index = (await http.post(handle.url + "/v2/repository/index")).json()
        assert {m["name"]: m["state"] for m in index} == {"slow": "SLEEPING", "b": "SLEEPING"}
    finally:
        fake.stop()
        for server in servers:
            server.terminate()


async def test_a_sleeping_model_is_ready_it_serves(
    tmp_path: Path, stub_fake: FakeKnative, scaler_of: Callable[[FakeKnative], KnativeScaler]
) -> None:
    scaler = scaler_of(stub_fake)
    stub_fake.index["slow"] = [index_entry("slow", "SLEEPING", "level host")]
    handle = await scaler.start(slow_spec(tmp_path))
    await scaler.wait_ready(handle, 30)
    assert "until_ready" in handle.timings


def test_ember_up_with_no_cluster_to_talk_to_says_so_and_exits_2(tmp_path: Path) -> None:
    slow_model(tmp_path)
    path = tmp_path / "ember.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "activator": {"scaler": "knative"},
                "models": [{"config": str(tmp_path / "slow.json")}],
            }
        )
    )
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-such-kubeconfig")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    done = subprocess.run(
        [sys.executable, "-m", "ember", "up", "--config", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "ember up: no Kubernetes cluster configured" in done.stderr
    assert "Traceback" not in done.stderr
