"""``ember serve --exit-on-load-failure``: a model that cannot load ends the process, saying why.

A real ``ember serve`` on port 0 with a ``Slow`` model (tests/fixtures) in ``tmp_path``: with
its weights file gone the process exits 3 within seconds, its termination-message file (what
the kubelet would hand to Knative) and its log naming the missing file; with its weights there
the model loads, serves, is unloaded and loaded again, and SIGTERM still ends it with 0.
Without the flag a server stops (exit 3, no termination message) only once none of its models
could load, and ``--stay-on-load-failure`` keeps it up even then.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from runtime.termination import EXIT_LOAD_FAILED
from tests.conftest import slow_model
from tests.integration.test_activator import BODY
from tests.servers import ServerProcess

EXIT_WITHIN_S = 30.0  # generous: the interpreter's imports, then a load that fails at once


def test_a_model_that_cannot_load_exits_3_with_the_reason_in_the_termination_log(
    tmp_path: Path,
) -> None:
    config = slow_model(tmp_path)
    weights = tmp_path / "weights" / "model.safetensors"
    weights.unlink()
    termination_log = tmp_path / "termination-log"
    server = ServerProcess(
        config, "--exit-on-load-failure", "--termination-log", str(termination_log)
    )
    try:
        try:
            code = server.proc.wait(EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running after {EXIT_WITHIN_S}s:\n{server.output}"
            ) from None
        assert code == EXIT_LOAD_FAILED, server.output
    finally:
        server.terminate()
    reason = f"weights file {weights} does not exist"
    message = termination_log.read_text()
    assert message == f"model 'slow' could not load (weights_missing): {reason}"
    assert "\n" not in message and len(message.encode()) <= 4096
    assert message in server.output, server.output
    assert "--exit-on-load-failure" in server.output  # the log says why it stops


def test_without_the_flag_a_server_none_of_whose_models_loaded_exits_3_saying_why(
    tmp_path: Path,
) -> None:
    config = slow_model(tmp_path)
    (tmp_path / "weights" / "model.safetensors").unlink()
    termination_log = tmp_path / "termination-log"
    server = ServerProcess(config, "--termination-log", str(termination_log))
    try:
        code = server.proc.wait(EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {EXIT_WITHIN_S}s:\n{server.output}") from None
    finally:
        server.terminate()
    assert code == EXIT_LOAD_FAILED, server.output
    assert "no model could load: model 'slow' could not load (weights_missing)" in server.output
    assert "--stay-on-load-failure keeps serving" in server.output
    assert not termination_log.exists()  # only --exit-on-load-failure writes it


def test_with_stay_the_server_stays_up_with_the_model_unavailable(tmp_path: Path) -> None:
    config = slow_model(tmp_path)
    (tmp_path / "weights" / "model.safetensors").unlink()
    termination_log = tmp_path / "termination-log"
    server = ServerProcess(
        config, "--stay-on-load-failure", "--termination-log", str(termination_log)
    )
    try:
        entry = _wait_for_failure(server)
        assert "does not exist" in entry["reason"] and entry["failure"] == "weights_missing"
        assert server.proc.poll() is None
    finally:
        assert server.terminate() == 0, server.output
    assert not termination_log.exists()


def test_one_failed_model_of_two_leaves_the_server_serving_the_other(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "working").mkdir()
    broken = slow_model(tmp_path / "broken")
    (tmp_path / "broken" / "weights" / "model.safetensors").unlink()
    working = slow_model(tmp_path / "working", name="other")
    server = ServerProcess(broken, "--config", str(working))
    try:
        entry = _wait_for_failure(server)
        assert entry["name"] == "slow"
        with httpx.Client(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while client.get("/v2/models/other/ready").status_code != 200:
                assert time.monotonic() < deadline, server.output
                time.sleep(0.05)
            r = client.post("/v2/models/other/infer", content=BODY)
            assert r.status_code == 200, r.text
        assert server.proc.poll() is None
    finally:
        assert server.terminate() == 0, server.output


def test_a_model_that_loads_keeps_serving_and_an_unload_is_not_a_failure(
    tmp_path: Path,
) -> None:
    config = slow_model(tmp_path)
    termination_log = tmp_path / "termination-log"
    server = ServerProcess(
        config, "--exit-on-load-failure", "--termination-log", str(termination_log)
    )
    try:
        server.wait_ready(timeout_s=60)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            r = client.post("/v2/models/slow/infer", content=BODY)
            assert r.json()["outputs"][0]["data"] == [6.0], r.text
            assert client.post("/v2/repository/models/slow/unload").status_code == 200
            assert client.post("/v2/repository/models/slow/load").status_code == 200
            r = client.post("/v2/models/slow/infer", content=BODY)
            assert r.status_code == 200, r.text
        assert server.proc.poll() is None
    finally:
        code = server.terminate()
    # had the unload counted as a failure, the process would have stopped itself with 3
    assert code == 0, server.output
    assert not termination_log.exists()


def _wait_for_failure(server: ServerProcess, timeout_s: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            for entry in httpx.post(server.url + "/v2/repository/index").json():
                if entry.get("failure"):
                    return dict(entry)
        except httpx.TransportError:
            pass
        if server.proc.poll() is not None:
            raise subprocess.SubprocessError(f"exited {server.proc.returncode}:\n{server.output}")
        time.sleep(0.05)
    raise TimeoutError(f"the load did not fail:\n{server.output}")
