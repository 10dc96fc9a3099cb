"""A model that raises: the client gets a 500 naming the failure, and the server's log one ERROR
line with the model's own traceback, behind ``ember serve`` and behind ``ember up`` alike (at the
default level: a replica's lines keep their levels through the activator)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import FIXTURES
from tests.integration.test_kserve_handler import write_config
from tests.servers import ServerProcess, running_server

BODY = {
    "id": "req-42",
    "inputs": [
        {"name": "words", "datatype": "BYTES", "shape": [1], "data": ["hi"]},
        {"name": "nums", "datatype": "INT32", "shape": [2], "data": [1, 2]},
    ],
}
MODEL_CLASS = f"{FIXTURES / 'echo_kserve.py'}:FailingModel"


def errors_logged(server: ServerProcess, timeout_s: float = 30) -> list[str]:
    """The ERROR lines the process logged, once its traceback's last line is out."""
    deadline = time.monotonic() + timeout_s
    while "ValueError: the model's own failure" not in server.output:
        assert time.monotonic() < deadline, f"no traceback logged:\n{server.output}"
        time.sleep(0.05)
    return [line for line in server.lines if re.search(r" ERROR ", line)]


def test_ember_serve_logs_a_models_exception_once_with_its_traceback(tmp_path: Path) -> None:
    with running_server(write_config(tmp_path, MODEL_CLASS)) as server:
        response = httpx.post(f"{server.url}/v2/models/echo/infer", json=BODY, timeout=30)
        assert response.status_code == 500
        assert "the model's own failure" in response.json()["error"]
        errors = errors_logged(server)
    assert len(errors) == 1, server.output
    assert "model 'echo' failed a batch of 1 item(s) from 1 request(s) (ids: req-42)" in errors[0]
    assert "Traceback (most recent call last)" in server.output
    assert "in _compute" in server.output  # the frame in the user's module
    # its ready line counts the process's start-up too, and its parts add up
    ready = next(line for line in server.lines if "ready in" in line)
    total, startup, load = map(
        float,
        re.search(  # type: ignore[union-attr]
            r"ready in ([\d.]+)s since the process started: start-up ([\d.]+)s .* \+ load "
            r"([\d.]+)s",
            ready,
        ).groups(),
    )
    assert abs(total - (startup + load)) <= 0.011 and startup > 0


def test_ember_up_shows_the_replicas_error_at_the_default_level(tmp_path: Path) -> None:
    config = write_config(tmp_path, MODEL_CLASS)
    stack = tmp_path / "ember.yaml"
    stack.write_text(
        yaml.safe_dump({"activator": {"grace_period_s": 5}, "models": [{"config": str(config)}]})
    )
    server = ServerProcess(stack, command="up")
    try:
        server.wait_ready(timeout_s=30)
        response = httpx.post(
            f"{server.url}/v2/models/echo/infer", content=json.dumps(BODY), timeout=60
        )
        assert response.status_code == 500
        assert "the model's own failure" in response.json()["error"]
        errors = errors_logged(server)
    finally:
        server.terminate()
    assert len(errors) == 1, server.output
    assert re.search(
        r"ERROR ember\.replica: \[echo pid \d+\] ember\.runtime: model 'echo'", errors[0]
    )
    assert "in _compute" in server.output
    assert " INFO ember.replica: " in server.output  # the replica's own info lines, too
