"""``ember up``: the activator with real replicas (``ember serve`` processes) on loopback.

Each test writes an ember.yaml, starts the activator on port 0 and talks to it over HTTP; the
replicas it starts are real processes, found through /proc as its children.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contracts.serve_order import ServeOrder, encode_order
from tests.conftest import MLP_CONFIG, slow_model
from tests.servers import ROOT, ServerProcess, children_of

ADMIN_TOKEN = "admin-token-0123456789"
API_TOKEN = "api-token-0123456789abcdef"
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [3.0]}]})
MLP_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]}
)


def stack(tmp_path: Path, models: list[dict[str, Any]], **activator: Any) -> Path:
    settings = {"events": str(tmp_path / "events.jsonl"), "grace_period_s": 5, **activator}
    path = tmp_path / "ember.yaml"
    path.write_text(yaml.safe_dump({"activator": settings, "models": models}))
    return path


@contextmanager
def activator(config: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(config, command="up", env=env)
    try:
        server.wait_ready(timeout_s=30)
        yield server
    finally:
        server.terminate()
        assert not replicas(server), "a replica outlived the activator"


def replicas(server: ServerProcess) -> list[int]:
    """PIDs of the activator's child processes (its replicas, and standbys)."""
    return children_of(server.proc.pid)


def events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(condition: Callable[[], bool], timeout_s: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


def state(server: ServerProcess, model: str) -> str:
    index = httpx.post(server.url + "/v2/repository/index").json()
    return str(next(m["activator_state"] for m in index if m["name"] == model))


def metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def queued(server: ServerProcess, model: str) -> float:
    """The activator's queue depth for a model, from its /metrics."""
    return metric(server, f'ember_activator_queue_depth{{model="{model}"}}')


def in_flight(server: ServerProcess, model: str) -> float:
    """Requests the activator has handed to a model's replicas, from its /metrics."""
    return metric(server, f'ember_activator_in_flight{{model="{model}"}}')


def _tcp_sockets() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every TCP socket, from /proc/net/tcp{,6}."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(a.rpartition(":")[2], 16) for a in fields[1:3])
            rows.append((local, remote, fields[3], int(fields[9])))
    return rows


def accepted(server: ServerProcess, client: socket.socket) -> bool:
    """Whether the server has accept()ed the client's connection: only then has the server's
    end an inode (in the kernel's accept queue it has none)."""
    port, mine = int(server.url.rpartition(":")[2]), client.getsockname()[1]
    return any(row[:2] == (port, mine) and row[3] for row in _tcp_sockets())


def draining(probe: http.client.HTTPConnection) -> bool:
    """Ask on a kept-alive connection: once the activator drains, its answers close it."""
    probe.request("GET", "/v2/health/live")
    answer = probe.getresponse()
    answer.read()
    return (answer.getheader("connection") or "").lower() == "close"


def slow(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {"config": str(slow_model(tmp_path, **kw))}


def post(
    server: ServerProcess, model: str = "slow", timeout: float = 60, **kw: Any
) -> httpx.Response:
    body = MLP_BODY if model == "mlp" else BODY
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, timeout=timeout, **kw)


# ----------------------------------------------------------------------------- the story
def test_a_request_at_zero_wakes_the_model_and_keep_alive_puts_it_back(tmp_path: Path) -> None:
    config = stack(tmp_path, [{"config": str(MLP_CONFIG), "keep_alive_s": 1}])
    with activator(config) as server:
        index = httpx.post(server.url + "/v2/repository/index").json()
        assert index == [
            {
                "name": "mlp",
                "state": "ZERO",
                "reason": "scaled to zero: a request wakes it",
                "activator_state": "zero",
            }
        ]
        assert replicas(server) == []
        cold = post(server, "mlp")
        assert cold.status_code == 200, cold.text
        assert cold.json()["outputs"][0]["shape"] == [1, 10]
        assert state(server, "mlp") == "ready" and len(replicas(server)) == 1
        warm = post(server, "mlp")
        assert warm.json()["outputs"] == cold.json()["outputs"]
        wait_until(lambda: state(server, "mlp") == "zero", 30, "scale to zero")
        wait_until(lambda: not replicas(server), 10, "the replica to exit")
        metrics = httpx.get(server.url + "/metrics").text
        assert 'ember_activator_cold_starts_total{model="mlp"} 1.0' in metrics
        assert 'ember_activator_model_state{model="mlp",state="zero"} 1.0' in metrics
    log = events(tmp_path)
    requests = [e for e in log if e["event"] == "request"]
    assert [r["cold"] for r in requests] == [True, False]
    assert all(r["status"] == 200 and r["arrival"] <= r["start"] <= r["end"] for r in requests)
    kinds = [e["event"] for e in log if e["event"] != "request"]
    assert kinds[:4] == ["activator_start", "replica_starting", "state", "replica_ready"]
    assert kinds[-1] == "activator_stop"  # the run ended cleanly: its replicas stopped first
    ready = next(e for e in log if e["event"] == "replica_ready")
    assert {"process_start", "until_ready", "imports", "load", "warmup"} <= set(ready["phases"])
    assert 0 < ready["phases"]["process_start"] < ready["cold_start_s"]
    assert "replica_stopped" in kinds
    report = [sys.executable, "-m", "ember", "cost-report", "--events"]
    cost = subprocess.run(
        [*report, str(tmp_path / "events.jsonl"), "--format", "json", "--price", "L4=0.71"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cost.returncode == 0, cost.stderr
    (mlp,) = json.loads(cost.stdout)["models"]
    assert (mlp["requests"], mlp["cold_starts"], mlp["replica_starts"]) == (2, 1, 1)
    assert mlp["replica_seconds"]["loading"] > 0 and mlp["replica_seconds"]["busy"] > 0
    transitions = [(e["from"], e["to"]) for e in log if e["event"] == "state"]
    assert transitions == [
        ("zero", "starting"),
        ("starting", "ready"),
        ("ready", "draining"),
        ("draining", "zero"),
    ]


def test_metadata_and_ready_at_zero_wake_nothing_and_agree_with_the_replica(
    tmp_path: Path,
) -> None:
    config = stack(tmp_path, [{"config": str(MLP_CONFIG)}])
    with activator(config) as server:
        at_zero = httpx.get(server.url + "/v2/models/mlp")
        assert at_zero.status_code == 200 and at_zero.headers["ember-model-state"] == "zero"
        metadata = at_zero.json()
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}]
        assert httpx.get(server.url + "/v2/models/mlp/versions/1").json() == metadata
        ready = httpx.get(server.url + "/v2/models/mlp/ready")
        assert ready.status_code == 200 and ready.json() == {"name": "mlp", "ready": True}
        assert state(server, "mlp") == "zero" and replicas(server) == []
        cold = post(server, "mlp")  # an infer request still wakes it
        assert cold.status_code == 200, cold.text
        relayed = httpx.get(server.url + "/v2/models/mlp")  # now the replica's own answer
        assert "ember-model-state" not in relayed.headers
        assert relayed.json() == metadata  # what the activator said at zero is the predictor's
    log = events(tmp_path)
    (starting,) = [e for e in log if e["event"] == "replica_starting"]
    assert starting["why"] == "a request"
    requests = [(e["endpoint"], e["version"], e["cold"]) for e in log if e["event"] == "request"]
    assert requests == [("infer", "", True), ("metadata", "", False)]


def test_errors_unknown_models_and_runtime_errors_intact(tmp_path: Path) -> None:
    config = stack(tmp_path, [{"config": str(MLP_CONFIG)}])
    with activator(config) as server:
        r = httpx.post(server.url + "/v2/models/nope/infer", content=MLP_BODY)
        assert r.status_code == 404 and "is not in the repository" in r.json()["error"]
        r = httpx.get(server.url + "/v2/models/mlp/infer", timeout=60)  # waits for a start
        assert r.status_code == 405 or r.status_code == 400  # the runtime's own answer
        bad = httpx.post(server.url + "/v2/models/mlp/infer", content=b"{not json")
        assert bad.status_code == 400 and "error" in bad.json()
        wrong = httpx.post(
            server.url + "/v2/models/mlp/infer",
            content=json.dumps(
                {
                    "inputs": [
                        {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
                    ]
                }
            ),
        )
        assert wrong.status_code == 400 and "784" in wrong.json()["error"]
        meta = httpx.get(server.url + "/v2/models/mlp")
        assert meta.status_code == 200 and meta.json()["name"] == "mlp"
        r = httpx.post(
            server.url + "/v2/models/mlp/infer",
            content=MLP_BODY,
            headers={"Ember-Deadline-Ms": "soon"},
        )
        assert r.status_code == 400 and "Ember-Deadline-Ms" in r.json()["error"]
        assert httpx.get(server.url + "/v2/nothing").status_code == 404


def test_one_keep_alive_connection_mixes_relayed_and_answered_requests(tmp_path: Path) -> None:
    import socket

    import numpy as np
    import tritonclient.http as triton

    with activator(stack(tmp_path, [{"config": str(MLP_CONFIG)}])) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            answers = [
                client.post("/v2/models/mlp/infer", content=MLP_BODY),  # cold: queued
                client.post("/v2/models/mlp/infer", content=MLP_BODY),  # warm: relayed
                client.get("/metrics"),
                client.get("/v2/models/mlp"),  # relayed: the runtime's metadata
                client.post("/v2/models/nope/infer", content=MLP_BODY),
                client.post("/v2/models/mlp/versions/1/infer", content=MLP_BODY),
                client.post("/v2/models/mlp/infer", content=b"{broken"),
            ]
        codes = [r.status_code for r in answers]
        assert codes == [200, 200, 200, 200, 404, 200, 400], codes
        assert answers[1].json()["outputs"] == answers[0].json()["outputs"]
        assert "ember_activator_requests_total" in answers[2].text
        assert answers[3].json()["inputs"][0]["name"] == "input"

        # two requests in one write (pipelined) come back in order
        host, port = server.url.removeprefix("http://").split(":")
        one = (
            f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(MLP_BODY)}"
            f"\r\n\r\n{MLP_BODY}"
        ).encode()
        meta = b"GET /v2/models/mlp HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(one + meta + one)
            received = b""
            while received.count(b"HTTP/1.1 200") < 3:
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
        first, second, third = received.split(b"HTTP/1.1 200")[1:]
        assert b'"logits"' in first and b'"platform"' in second and b'"logits"' in third

        # tritonclient: keep-alive, binary tensors, through the relay
        triton_client = triton.InferenceServerClient(f"{host}:{port}")
        x = triton.InferInput("input", [2, 784], "FP32")
        x.set_data_from_numpy(np.full((2, 784), 0.5, dtype=np.float32), binary_data=True)
        result = triton_client.infer("mlp", [x]).as_numpy("logits")
        triton_client.close()
        assert result is not None and result.shape == (2, 10)
        assert np.allclose(result[0], answers[0].json()["outputs"][0]["data"], atol=1e-5)


def test_requests_after_the_replicas_keep_alive_closed_its_connections(tmp_path: Path) -> None:
    """uvicorn closes connections idle for 5 s; the relay and the ASGI path must not race it."""
    config = stack(tmp_path, [{"config": str(MLP_CONFIG)}])
    with activator(config) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/v2/models/mlp/infer", content=MLP_BODY).status_code == 200
        assert client.post("/v2/models/mlp/infer", content=MLP_BODY).status_code == 200
        time.sleep(5.5)  # the behaviour under test: outlast uvicorn's 5 s keep-alive
        for _ in range(3):
            r = client.post("/v2/models/mlp/infer", content=MLP_BODY)
            assert r.status_code == 200, r.text
            assert client.get("/v2/models/mlp/config").status_code == 200


def test_malformed_http_and_oversized_bodies_are_refused(tmp_path: Path) -> None:
    import socket

    config = stack(tmp_path, [{"config": str(MLP_CONFIG)}], max_request_bytes=1000)
    with activator(config) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400") and b"malformed" in answer
        r = httpx.post(server.url + "/v2/models/mlp/infer", content=MLP_BODY)
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]
        assert state(server, "mlp") == "zero"  # nothing woke the model


# ----------------------------------------------------------------------------- queues
def test_a_flood_past_the_queue_bound_gets_503s_and_every_accepted_request_an_answer(
    tmp_path: Path,
) -> None:
    model = {**slow(tmp_path, delay_s=0.1), "container_concurrency": 1, "queue_size": 4}
    with activator(stack(tmp_path, [model])) as server, ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: post(server), range(12)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) >= 4 and set(codes) <= {200, 503}, codes
    full = [r for r in answers if r.status_code == 503]
    assert full and all("queue full" in r.json()["error"] for r in full)
    assert all(r.headers["Retry-After"] == "1" for r in full)
    assert all(r.json()["outputs"][0]["data"] == [6.0] for r in answers if r.status_code == 200)


def test_a_deadline_while_cold_is_a_504(tmp_path: Path) -> None:
    with activator(stack(tmp_path, [slow(tmp_path, load_delay_s=2)])) as server:
        r = post(server, headers={"Ember-Deadline-Ms": "300"})
        assert r.status_code == 504 and "deadline" in r.json()["error"]
        assert post(server).status_code == 200  # the start went on


def test_a_replica_that_never_gets_ready_fails_its_waiters_and_goes_back_to_zero(
    tmp_path: Path,
) -> None:
    model = {**slow(tmp_path, load_delay_s=60), "startup_timeout_s": 3}
    with activator(stack(tmp_path, [model])) as server:
        r = post(server)
        assert r.status_code == 504 and "not ready within 3s" in r.json()["error"]
        assert state(server, "slow") == "zero"
        index = httpx.post(server.url + "/v2/repository/index").json()
        assert "not ready within 3s" in index[0]["reason"]
        wait_until(lambda: not replicas(server), 10, "the stuck replica to be stopped")
    assert any(e["event"] == "replica_failed" for e in events(tmp_path))


def test_a_replica_killed_mid_request_gives_502_and_the_queue_a_new_replica(
    tmp_path: Path,
) -> None:
    model = {**slow(tmp_path, delay_s=1.5), "container_concurrency": 1}
    with activator(stack(tmp_path, [model])) as server, ThreadPoolExecutor(2) as pool:
        assert post(server).status_code == 200  # warm: the next one takes the relay's path
        first = pool.submit(post, server)
        # counted in flight once relayed to the replica, whose 1.5 s forward pass (the fixture's
        # sleep) outlasts the waits below
        wait_until(lambda: in_flight(server, "slow") == 1, 30, "the first request in flight")
        second = pool.submit(post, server)
        wait_until(lambda: queued(server, "slow") == 1, 30, "the second queued behind it")
        (pid,) = replicas(server)
        os.kill(pid, signal.SIGKILL)
        r1, r2 = first.result(60), second.result(60)
        assert r1.status_code == 502 and "went away" in r1.json()["error"]
        assert r2.status_code == 200, r2.text
        assert pid not in replicas(server)
    stopped = [e for e in events(tmp_path) if e["event"] == "replica_stopped"]
    assert "crashed" in stopped[0]["reason"] and "SIGKILL" in stopped[0]["reason"]


def test_a_client_that_leaves_the_queue_frees_its_place(tmp_path: Path) -> None:
    model = {**slow(tmp_path, load_delay_s=2), "queue_size": 1}
    with activator(stack(tmp_path, [model])) as server:
        with pytest.raises(httpx.ReadTimeout):
            post(server, timeout=0.5)  # queued while the model starts, then gone
        wait_until(lambda: queued(server, "slow") == 0, 30, "its place to be freed")
        r = post(server)  # the one place is free again
        assert r.status_code == 200, r.text
    statuses = [e["status"] for e in events(tmp_path) if e["event"] == "request"]
    assert statuses == [499, 200]


def test_sigterm_with_requests_queued_answers_them_and_exits_0(tmp_path: Path) -> None:
    config = stack(tmp_path, [slow(tmp_path, load_delay_s=2)], grace_period_s=60)
    server = ServerProcess(config, command="up")
    try:
        server.wait_ready(timeout_s=30)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(post, server) for _ in range(3)]
            wait_until(lambda: queued(server, "slow") == 3, 30, "three queued requests")
            server.proc.send_signal(signal.SIGTERM)
            answers = [f.result(60) for f in futures]
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert server.proc.wait(60) == 0
        assert not replicas(server)
    finally:
        server.terminate()


def test_queued_requests_still_waiting_when_the_grace_ends_get_503_not_silence(
    tmp_path: Path,
) -> None:
    config = stack(tmp_path, [slow(tmp_path, load_delay_s=30)], grace_period_s=1)
    server = ServerProcess(config, command="up")
    try:
        server.wait_ready(timeout_s=30)
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(post, server) for _ in range(2)]
            wait_until(lambda: queued(server, "slow") == 2, 30, "two queued requests")
            server.proc.send_signal(signal.SIGTERM)
            answers = [f.result(30) for f in futures]
        assert [r.status_code for r in answers] == [503, 503]
        assert all("shutting down" in r.json()["error"] for r in answers)
        assert server.proc.wait(30) == 0
        assert not replicas(server)
    finally:
        server.terminate()


def test_sigterm_answers_a_request_already_on_its_way(tmp_path: Path) -> None:
    """A connection accepted before SIGTERM whose request lands just after it is answered; one
    that never sends anything is closed after a short grace and does not hold the shutdown."""
    server = ServerProcess(stack(tmp_path, [slow(tmp_path)]), command="up")
    try:
        server.wait_ready(timeout_s=30)
        assert post(server).status_code == 200  # warm
        host, port = server.url.removeprefix("http://").split(":")
        late = socket.create_connection((host, int(port)), timeout=30)
        silent = socket.create_connection((host, int(port)), timeout=30)
        probe = http.client.HTTPConnection(host, int(port), timeout=30)
        with late, silent, contextlib.closing(probe):
            # the activator has accepted both; the request is still "in flight"
            wait_until(lambda: accepted(server, late) and accepted(server, silent), 30, "accept")
            assert not draining(probe)
            server.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: draining(probe), 30, "the drain to begin")
            head = (
                "POST /v2/models/slow/infer HTTP/1.1\r\nhost: x\r\n"
                f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
            )
            late.sendall(head.encode() + BODY.encode())
            answer = b""
            while chunk := late.recv(65536):  # the activator closes it after this answer
                answer += chunk
            status_line, _, rest = answer.partition(b"\r\n")
            assert status_line == b"HTTP/1.1 200 OK", answer[:300]
            assert b"connection: close" in rest.lower()
            assert silent.recv(1) == b""  # closed without an answer: it asked nothing
        assert server.proc.wait(30) == 0
    finally:
        server.terminate()


def holders(inode: int, pids: list[int]) -> list[int]:
    """Which of ``pids`` hold the socket ``inode`` open."""
    link = f"socket:[{inode}]"
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == link for fd in Path(f"/proc/{pid}/fd").iterdir()):
                found.append(pid)
    return found


def test_no_child_holds_the_listening_socket_so_a_drain_refuses_new_connections(
    tmp_path: Path,
) -> None:
    """Replicas and warm-pool standbys never get the activator's listening socket: once SIGTERM
    closes it, a new connection is refused at once (not left in a backlog nobody reads) while
    what was in flight still gets its answer."""
    config = stack(tmp_path, [slow(tmp_path, delay_s=5)], warm_pool=1, grace_period_s=60)
    server = ServerProcess(config, command="up")
    try:
        server.wait_ready(timeout_s=30)
        host, port = server.url.removeprefix("http://").split(":")
        (listener,) = [r[3] for r in _tcp_sockets() if r[0] == int(port) and r[2] == "0A"]
        assert holders(listener, [server.proc.pid]) == [server.proc.pid]
        pool_ready = lambda: metric(server, "ember_activator_warm_pool_ready") == 1  # noqa: E731
        wait_until(pool_ready, 60, "the standby")
        assert holders(listener, replicas(server)) == []
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(post, server)  # the standby becomes its replica: 5 s in forward
            wait_until(lambda: in_flight(server, "slow") == 1, 60, "the request on a replica")
            children = replicas(server)  # the replica, and a standby starting in its place
            assert children and holders(listener, children) == []
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 1.0
            refused = False
            while not refused and time.monotonic() < deadline:
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                except ConnectionRefusedError:
                    refused = True
                else:
                    time.sleep(0.02)
            assert refused, "a new connection was still taken 1 s into the drain"
            assert held.result(60).status_code == 200  # in flight: answered
        assert server.proc.wait(60) == 0
    finally:
        server.terminate()


# ----------------------------------------------------------------------------- warm pool
def test_the_warm_pool_starts_a_replica_without_a_new_interpreter(tmp_path: Path) -> None:
    config = stack(tmp_path, [{"config": str(MLP_CONFIG), "keep_alive_s": 1}], warm_pool=1)
    with activator(config) as server:
        pool_ready = lambda: metric(server, "ember_activator_warm_pool_ready") == 1  # noqa: E731
        wait_until(pool_ready, 60, "the pool")
        assert metric(server, "ember_activator_warm_pool_rss_bytes") > 50e6  # torch is in it
        (standby,) = replicas(server)
        r = post(server, "mlp")
        assert r.status_code == 200, r.text
        wait_until(lambda: any(e["event"] == "replica_ready" for e in events(tmp_path)), 5)
        ready = [e for e in events(tmp_path) if e["event"] == "replica_ready"]
        assert ready[0]["warm_pool"] is True
        assert metric(server, "ember_activator_warm_pool_ready") == 0  # it was taken
        assert replicas(server) == [standby]  # it became the replica: the same process
        # once that start is done the pool refills; the replica goes back to zero as usual
        wait_until(pool_ready, 60, "the refill")
        wait_until(lambda: standby not in replicas(server), 30, "keep-alive to stop it")
        # a standby that dies while waiting is replaced, and a start never waits for one
        (second,) = replicas(server)
        os.kill(second, signal.SIGKILL)
        r = post(server, "mlp")
        assert r.status_code == 200, r.text
        wait_until(lambda: pool_ready() and second not in replicas(server), 60, "a replacement")


def test_a_standby_process_has_one_thread_and_no_cuda_context_then_serves(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "ember", "serve", "--standby"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line.startswith("ember serve: standby "), line
        report = json.loads(line.split("standby ", 1)[1])
        assert report["threads"] == 1 and report["cuda_initialized"] is False
        assert "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()  # imports done
        order = ServeOrder(configs=(MLP_CONFIG,), port=0)
        proc.stdin.write(encode_order(order).decode())
        proc.stdin.close()
        url = proc.stdout.readline().split("listening on ")[1].strip()
        try:
            wait_until(lambda: _ready(url), 60, "the standby turned replica")
            r = httpx.post(url + "/v2/models/mlp/infer", content=MLP_BODY)
            assert r.status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def test_a_standby_imports_ahead_what_it_is_told_then_serves_an_llm(
    tmp_path: Path, tiny_llm_dir: Path
) -> None:
    config = tmp_path / "model.yaml"
    config.write_text(f"name: tiny-llm\nhandler: text-generation\nsource: {tiny_llm_dir}\n")
    preload = ["transformers.models.llama.modeling_llama", "no.such.module"]
    with subprocess.Popen(
        [sys.executable, "-m", "ember", "serve", "--standby"]
        + [arg for module in preload for arg in ("--preload", module)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        report = json.loads(line.split("standby ", 1)[1])
        assert report["missing"] == ["no.such.module"] and report["threads"] == 1
        proc.stdin.write(encode_order(ServeOrder(configs=(config,), port=0)).decode())
        proc.stdin.close()
        url = proc.stdout.readline().split("listening on ")[1].strip()
        try:
            wait_until(lambda: _ready(url), 60, "the standby turned replica")
            body = {"text_input": "Hello", "max_tokens": 3}
            r = httpx.post(url + "/v2/models/tiny-llm/generate", json=body, timeout=30)
            assert r.status_code == 200, r.text
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def test_preload_without_standby_is_refused() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ember", "serve", "-c", "m.yaml", "--preload", "transformers"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "--preload is for a --standby process" in out.stderr


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/v2/health/ready").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("stdin", "code", "message"),
    [
        ("", 0, ""),
        ("not json\n", 2, "a serve order that is not JSON"),
        ('["--config", "m.yaml"]\n', 2, "a serve order is a JSON object"),
        ('{"configs": ["m.yaml"], "standby": true}\n', 2, "unknown keys ['standby']"),
    ],
)
def test_a_standby_released_or_given_bad_arguments(stdin: str, code: int, message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ember", "serve", "--standby"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == code, out.stderr[-2000:]
    assert message in out.stderr


# ----------------------------------------------------------------------------- security
def test_api_tokens_guard_the_data_plane_on_both_paths_but_not_health(tmp_path: Path) -> None:
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"# rotation: old and new\n{API_TOKEN}\nnew-token-abcdefghijklmnop\n")
    config = stack(tmp_path, [slow(tmp_path)], api_token_file=str(tokens))
    with activator(config, env={"EMBER_ADMIN_TOKEN": ADMIN_TOKEN}) as server:
        assert httpx.get(server.url + "/v2/health/ready").status_code == 200  # probes: open
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"X": "y"}):
            r = post(server, headers=headers)
            assert r.status_code == 401 and "Bearer" in r.json()["error"], r.text
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(server.url + "/metrics").status_code == 401
        assert httpx.get(server.url + "/v2/models/slow").status_code == 401
        # cold (answered by the ASGI app), then warm (relayed on the fast path): both pass
        for token in (API_TOKEN, "new-token-abcdefghijklmnop", API_TOKEN):
            r = post(server, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
        r = post(server, headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert r.status_code == 401  # warm now: the fast path checks too
        # the API token does not open the admin API, nor the admin token the data plane
        api = {"Authorization": f"Bearer {API_TOKEN}"}
        assert httpx.get(server.url + "/admin/models", headers=api).status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert post(server, headers=admin).status_code == 401
        assert httpx.get(server.url + "/metrics", headers=api).status_code == 200
        pids = replicas(server)
        assert pids, "the warm replica"
        for pid in pids:  # a replica's environment holds no token of the activator's
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert ADMIN_TOKEN.encode() not in environ and b"EMBER_ADMIN_TOKEN=" not in environ
    requests = [e for e in events(tmp_path) if e["event"] == "request"]
    assert [e["status"] for e in requests] == [200, 200, 200]  # refused ones never reach a pool


def test_a_short_token_or_an_empty_token_file_stops_the_stack_at_start(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    for extra, env, message in (
        ({}, {"EMBER_API_TOKEN": "sh0rtT0k"}, "at least 16 characters"),
        ({"api_token_file": str(empty)}, {}, "no token in it"),
        ({"admin_token_file": str(tmp_path / "missing")}, {}, "admin token file"),
    ):
        config = stack(tmp_path, [slow(tmp_path)], **extra)
        out = subprocess.run(
            [sys.executable, "-m", "ember", "up", "--config", str(config), "--port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert out.returncode != 0 and message in out.stderr, out.stderr
        assert "sh0rtT0k" not in out.stderr  # a token is never printed, not even a bad one


def test_oversized_headers_get_431_and_the_activator_keeps_serving(tmp_path: Path) -> None:
    with activator(stack(tmp_path, [slow(tmp_path)])) as server:
        r = post(server, headers={"X-Big": "a" * 70_000})
        assert r.status_code == 431 and "headers over 65536" in r.json()["error"]
        many = {f"X-{i}": "1" for i in range(300)}
        r = post(server, headers=many)
        assert r.status_code == 431 and "header fields" in r.json()["error"]
        assert post(server).status_code == 200


# ----------------------------------------------------------------------------- admin
def test_admin_api_needs_its_token_then_warms_and_sleeps(tmp_path: Path) -> None:
    config = stack(tmp_path, [slow(tmp_path)], keep_alive_s=0.5)
    with activator(config, env={"EMBER_ADMIN_TOKEN": ADMIN_TOKEN}) as server:
        assert httpx.get(server.url + "/admin/models").status_code == 401
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(server.url + "/admin/models", headers=wrong).status_code == 401
        listed = httpx.get(server.url + "/admin/models", headers=auth).json()
        assert listed[0]["name"] == "slow" and listed[0]["state"] == "zero"
        bad = httpx.post(server.url + "/admin/models/slow/warm", json={"seconds": -1}, headers=auth)
        assert bad.status_code == 400 and "seconds" in bad.json()["error"]
        deep = b"[" * 200_000 + b"]" * 200_000  # a finding of the fuzzers: once a 500
        bad = httpx.post(server.url + "/admin/models/slow/warm", content=deep, headers=auth)
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]
        r = httpx.post(server.url + "/admin/models/slow/warm", json={"seconds": 30}, headers=auth)
        assert r.status_code == 200
        wait_until(lambda: state(server, "slow") == "ready", 60, "the warm replica")
        time.sleep(1.0)  # the behaviour under test: outlast the 0.5 s keep-alive
        assert state(server, "slow") == "ready"  # held past keep-alive by the warm window
        r = httpx.post(server.url + "/admin/models/slow/sleep", headers=auth)
        assert r.status_code == 200
        wait_until(lambda: state(server, "slow") == "zero", 30, "sleep")
    assert any(e["event"] == "prewarm" for e in events(tmp_path))


def test_ember_prewarm_asks_the_activator_with_its_token(tmp_path: Path) -> None:
    config = stack(tmp_path, [slow(tmp_path)], keep_alive_s=0.5)
    with activator(config, env={"EMBER_ADMIN_TOKEN": ADMIN_TOKEN}) as server:

        def prewarm(token: str) -> subprocess.CompletedProcess[str]:
            cmd = [sys.executable, "-m", "ember", "prewarm", "--activator", server.url]
            cmd += ["--model", "slow", "--seconds", "30"]
            env = {**os.environ, "EMBER_ADMIN_TOKEN": token}
            return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)

        denied = prewarm("wrong")
        assert denied.returncode == 1 and "401" in denied.stderr
        done = prewarm(ADMIN_TOKEN)
        assert done.returncode == 0, done.stderr
        assert "slow: warm for 30s with 1 replica(s)" in done.stdout
        wait_until(lambda: state(server, "slow") == "ready", 60, "the pre-warmed replica")
        time.sleep(1.0)  # the behaviour under test: outlast the 0.5 s keep-alive
        assert state(server, "slow") == "ready"  # held past its 0.5 s keep-alive
    prewarms = [e for e in events(tmp_path) if e["event"] == "prewarm"]
    assert prewarms and prewarms[0]["source"] == "prewarm"


def test_repository_load_and_unload_map_to_wake_and_sleep(tmp_path: Path) -> None:
    with activator(stack(tmp_path, [slow(tmp_path)])) as server:
        r = httpx.post(server.url + "/v2/repository/models/slow/load", timeout=60)
        assert r.status_code == 200 and state(server, "slow") == "ready"
        assert httpx.post(server.url + "/v2/repository/models/slow/unload").status_code == 200
        wait_until(lambda: state(server, "slow") == "zero", 30, "unload")


# ----------------------------------------------------------------------------- processes
def test_a_killed_activator_leaves_no_replica_behind(tmp_path: Path) -> None:
    server = ServerProcess(stack(tmp_path, [slow(tmp_path)]), command="up")
    try:
        server.wait_ready(timeout_s=30)
        assert post(server).status_code == 200
        (pid,) = replicas(server)
        server.proc.kill()
        server.proc.wait(10)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 10, "the orphan")
    finally:
        server.terminate()


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("models: []", "models"),
        ("models:\n  - config: nowhere.yaml", "does not exist"),
        ("activator: {keep_alive: 3}\nmodels:\n  - config: x.yaml", "keep_alive"),
        ("models:\n  - {config: m.yaml, min_replicas: 3, max_replicas: 1}", "above max_replicas"),
    ],
)
def test_a_bad_ember_yaml_is_one_line_and_exit_2(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "m.yaml").write_text("name: m\nhandler: torch-module\n")
    path = tmp_path / "ember.yaml"
    path.write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "ember", "up", "--config", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


BAD_BODIES = [
    b'{"inputs":[',
    b"[]",
    json.dumps({"inputs": [{"name": "image", "shape": [1, 784], "datatype": "FP32"}]}).encode(),
    json.dumps({"inputs": [{"name": "input", "shape": [784], "datatype": "FP32"}]}).encode(),
    json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "INT64"}]}).encode(),
    json.dumps({"inputs": [{"name": "input", "shape": [65, 784], "datatype": "FP32"}]}).encode(),
]


def test_a_bad_request_at_zero_is_the_predictors_400_and_starts_no_replica(
    tmp_path: Path, mlp_server: ServerProcess
) -> None:
    config = stack(tmp_path, [{"config": str(MLP_CONFIG)}])
    with activator(config) as server:
        for body in BAD_BODIES:
            theirs = httpx.post(f"{mlp_server.url}/v2/models/mlp/infer", content=body)
            ours = httpx.post(f"{server.url}/v2/models/mlp/infer", content=body)
            assert (
                (ours.status_code, ours.json())
                == (theirs.status_code, theirs.json())
                == (
                    400,
                    theirs.json(),
                )
            ), body
        assert state(server, "mlp") == "zero" and not replicas(server)
        assert [e for e in events(tmp_path) if e["event"] == "replica_starting"] == []
        good = httpx.post(f"{server.url}/v2/models/mlp/infer", content=MLP_BODY, timeout=60)
        assert good.status_code == 200, good.text


def test_ember_status_url_lists_a_running_activators_models(tmp_path: Path) -> None:
    config = stack(tmp_path, [{"config": str(MLP_CONFIG)}, slow(tmp_path)])
    with activator(config) as server:
        assert post(server, "mlp").status_code == 200
        done = subprocess.run(
            [sys.executable, "-m", "ember", "status", "--url", server.url],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["MODEL", "STATE"]
    mlp = next(line for line in lines if line.startswith("mlp "))
    assert "READY" in mlp and "1/1 ready" in mlp and re.search(r"\d+\.\d\ds", mlp)
    slow_line = next(line for line in lines if line.startswith("slow "))
    assert "ZERO" in slow_line and " - " in slow_line  # never started: no cold start yet
    gone = subprocess.run(
        [sys.executable, "-m", "ember", "status", "--url", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert gone.returncode == 1 and "cannot reach http://127.0.0.1:1" in gone.stderr
