"""The local scaler reads its replicas' status pipes, and nothing else.

Replicas here are tests/fixtures/fake_replica.py, which writes the status lines a test scripts;
the last test runs a real ``ember serve`` whose model has no weights file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from activator.errors import ReplicaStartFailed, StartFailure
from activator.scalers.local import LocalScaler
from contracts.replica import FailureKind, Listening, ModelStatus, Standby, encode
from contracts.stack import ModelSpec
from tests.conftest import FIXTURES, slow_model
from tests.fixtures.specs import model_spec

FAKE = (sys.executable, str(FIXTURES / "fake_replica.py"))
URL = "http://127.0.0.1:1"


def line(event: Listening | ModelStatus | Standby) -> dict[str, str]:
    return {"status": encode(event).decode().rstrip("\n")}


LISTENING = line(Listening(URL))
LOADING = line(ModelStatus("m", "LOADING", "loading"))
READY = line(ModelStatus("m", "READY", phases={"imports": 0.5, "load": 0.25, "warmup": 0.125}))


def spec(tmp_path: Path, steps: list[dict[str, Any]], name: str = "m") -> ModelSpec:
    script = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}.json"
    script.write_text(json.dumps(steps))
    return model_spec(
        name=name,
        config_path=script,
        container_concurrency=1,
        target=1.0,
        keep_alive_s=1.0,
        queue_size=1,
        deadline_s=30.0,
        startup_timeout_s=30.0,
    )


@pytest.fixture
async def scaler() -> AsyncIterator[LocalScaler]:
    scaler = LocalScaler(command=FAKE, listen_timeout_s=10)
    try:
        yield scaler
    finally:
        await scaler.aclose()


async def start_failure(
    scaler: LocalScaler, model: ModelSpec, timeout_s: float = 30
) -> ReplicaStartFailed:
    with pytest.raises(ReplicaStartFailed) as caught:
        handle = await scaler.start(model)
        await scaler.wait_ready(handle, timeout_s)
    return caught.value


async def test_listening_starts_it_and_ready_brings_the_phases(
    tmp_path: Path, scaler: LocalScaler
) -> None:
    handle = await scaler.start(spec(tmp_path, [LISTENING, LOADING, {"sleep": 0.2}, READY]))
    assert handle.url == URL and handle.pid is not None and not handle.warm
    started = time.perf_counter()
    await scaler.wait_ready(handle, 10)
    waited = time.perf_counter() - started
    assert handle.timings["imports"] == 0.5 and handle.timings["warmup"] == 0.125
    # the wait is timed from the call (the fake's 0.2 s sleep may begin a moment before it)
    assert 0 < handle.timings["until_ready"] <= waited and "process_start" in handle.timings


async def test_another_models_status_is_not_this_ones(tmp_path: Path, scaler: LocalScaler) -> None:
    other = line(ModelStatus("other", "UNAVAILABLE", "x", FailureKind.WEIGHTS_MISSING))
    handle = await scaler.start(spec(tmp_path, [LISTENING, other, READY]))
    await scaler.wait_ready(handle, 10)


async def test_a_failed_load_fails_the_start_at_once(tmp_path: Path, scaler: LocalScaler) -> None:
    failed = ModelStatus(
        "m", "UNAVAILABLE", "load failed: weights file /w/model.safetensors does not exist"
    )
    failed = ModelStatus(failed.model, failed.state, failed.reason, FailureKind.WEIGHTS_MISSING)
    handle = await scaler.start(spec(tmp_path, [LISTENING, LOADING, line(failed)]))
    began = time.monotonic()
    with pytest.raises(ReplicaStartFailed) as caught:
        await scaler.wait_ready(handle, 300)
    assert time.monotonic() - began < 1.0  # the process lives on: only its word ended the wait
    assert caught.value.kind is StartFailure.LOAD_FAILED
    assert caught.value.failure is FailureKind.WEIGHTS_MISSING
    assert "/w/model.safetensors does not exist" in str(caught.value)
    assert caught.value.status_code == 503


async def test_an_exit_before_listening_says_how_and_quotes_stderr(
    tmp_path: Path, scaler: LocalScaler
) -> None:
    steps: list[dict[str, Any]] = [{"stderr": "ember serve: cannot read model config x.yaml"}]
    steps.append({"exit": 2})
    failure = await start_failure(scaler, spec(tmp_path, steps))
    assert failure.kind is StartFailure.EXITED and failure.failure is None
    assert "exited with 2 before listening: ember serve: cannot read model config" in str(failure)


async def test_an_exit_while_loading_says_how_and_quotes_stderr(
    tmp_path: Path, scaler: LocalScaler
) -> None:
    steps: list[dict[str, Any]] = [LISTENING, LOADING, {"stderr": "Killed: out of patience"}]
    steps.append({"exit": 137})
    failure = await start_failure(scaler, spec(tmp_path, steps))
    assert failure.kind is StartFailure.EXITED
    assert "exited with 137 while loading: Killed: out of patience" in str(failure)


async def test_stdout_is_never_read_for_an_address(tmp_path: Path) -> None:
    scaler = LocalScaler(command=FAKE, listen_timeout_s=0.5)
    try:
        steps = [{"stdout": f"ember serve: listening on {URL}"}, {"stderr": "still busy"}]
        failure = await start_failure(scaler, spec(tmp_path, steps))
    finally:
        await scaler.aclose()
    assert failure.kind is StartFailure.NOT_LISTENING
    assert "did not listen within 0.5s: still busy" in str(failure)


async def test_a_replica_not_ready_in_time(tmp_path: Path, scaler: LocalScaler) -> None:
    handle = await scaler.start(spec(tmp_path, [LISTENING, LOADING]))
    began = time.monotonic()
    with pytest.raises(ReplicaStartFailed) as caught:
        await scaler.wait_ready(handle, 0.3)
    assert 0.3 <= time.monotonic() - began < 5
    assert caught.value.kind is StartFailure.TIMED_OUT
    assert "not ready within 0.3s" in str(caught.value)


@pytest.mark.parametrize(
    "steps",
    [
        [{"status": f"ember serve: listening on {URL}"}],
        [LISTENING, {"status": '{"kind": "model", "model": "m", "state": "SORT OF READY"}'}],
        [LISTENING, {"status": "x" * (2 << 20)}],
    ],
    ids=["before-listening", "while-loading", "over-the-limit"],
)
async def test_a_malformed_status_line_fails_the_start(
    tmp_path: Path, scaler: LocalScaler, steps: list[dict[str, Any]]
) -> None:
    failure = await start_failure(scaler, spec(tmp_path, steps))
    assert failure.kind is StartFailure.CONTRACT_VIOLATION
    assert "broke the status contract" in str(failure)


async def test_a_malformed_line_after_ready_is_logged_and_ignored(
    tmp_path: Path, scaler: LocalScaler, caplog: pytest.LogCaptureFixture
) -> None:
    steps: list[dict[str, Any]] = [LISTENING, READY, {"status": "garbage"}, {"sleep": 0.2}]
    steps.append({"exit": 0})
    handle = await scaler.start(spec(tmp_path, steps))
    with caplog.at_level(logging.WARNING, "ember.activator"):
        await scaler.wait_ready(handle, 10)
        reason = await asyncio.wait_for(scaler.wait_exit(handle), 10)
    assert "exited with 0" in reason
    assert any("ignored a bad status line" in r.getMessage() for r in caplog.records)


RECORD = json.dumps(
    {
        "level": "ERROR",
        "logger": "ember.runtime",
        "message": "model 'm' failed a batch",
        "exc": "Traceback (most recent call last):\nRuntimeError: boom",
    }
)


async def until_logged(
    caplog: pytest.LogCaptureFixture, what: str, timeout_s: float = 10
) -> logging.LogRecord:
    deadline = time.monotonic() + timeout_s
    while True:
        for record in caplog.records:
            if record.name == "ember.replica" and what in record.getMessage():
                return record
        assert time.monotonic() < deadline, f"nothing logged saying {what!r}"
        await asyncio.sleep(0.01)


async def test_a_replicas_records_are_logged_at_their_own_level_with_model_and_pid(
    tmp_path: Path, scaler: LocalScaler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ember.replica")
    steps = [
        LISTENING,
        {"stderr": RECORD},
        {"stderr": "UserWarning: printed by a library"},
        {"stdout": "a print"},
        READY,
    ]
    handle = await scaler.start(spec(tmp_path, steps))
    await scaler.wait_ready(handle, 10)
    record = await until_logged(caplog, "failed a batch")
    assert record.levelname == "ERROR"
    message = record.getMessage()
    assert message.startswith(f"[m pid {handle.pid}] ember.runtime: model 'm' failed a batch")
    assert "RuntimeError: boom" in message  # its traceback, in the same record
    assert (await until_logged(caplog, "printed by a library")).levelname == "WARNING"
    assert (await until_logged(caplog, "a print")).levelname == "INFO"


async def test_quiet_replicas_are_logged_at_debug_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ember.replica")
    scaler = LocalScaler(command=FAKE, listen_timeout_s=10, forward_logs=False)
    try:
        handle = await scaler.start(spec(tmp_path, [LISTENING, {"stderr": RECORD}, READY]))
        await scaler.wait_ready(handle, 10)
        assert (await until_logged(caplog, "failed a batch")).levelname == "DEBUG"
    finally:
        await scaler.aclose()


def cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


async def test_replicas_are_told_to_log_json_at_the_activators_level(tmp_path: Path) -> None:
    scaler = LocalScaler(command=FAKE, listen_timeout_s=10, log_level="warning")
    try:
        handle = await scaler.start(spec(tmp_path, [LISTENING, READY]))
        await scaler.wait_ready(handle, 10)
        assert handle.pid is not None
        argv = cmdline(handle.pid)
        assert b"--log-format" in argv and argv[argv.index(b"--log-format") + 1] == b"json"
        assert argv[argv.index(b"--log-level") + 1] == b"warning"
    finally:
        await scaler.aclose()


async def with_a_standby() -> LocalScaler:
    """A scaler whose warm pool holds one ready standby (a fake replica)."""
    scaler = LocalScaler(command=FAKE, listen_timeout_s=10, warm_pool=1)
    scaler.fill_pool()
    deadline = time.monotonic() + 10
    while scaler.pool_status()[0] < 1:
        if time.monotonic() > deadline:
            await scaler.aclose()
            raise AssertionError("no standby")
        await asyncio.sleep(0.02)
    return scaler


async def test_a_standby_says_so_on_its_pipe_and_keeps_it_as_a_replica(tmp_path: Path) -> None:
    scaler = await with_a_standby()
    try:
        handle = await scaler.start(spec(tmp_path, [LISTENING, READY]))
        assert handle.warm and handle.url == URL
        await scaler.wait_ready(handle, 10)
        assert handle.timings["load"] == 0.25
    finally:
        await scaler.aclose()


def wait_until_dead(pid: int) -> None:
    """Until ``pid`` is dead (a zombie, or reaped by asyncio's child-watcher thread), without
    running the event loop: so the loop has not been told of its exit yet."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + 10
    while stat.exists():
        try:
            if stat.read_text().split(") ", 1)[1][0] == "Z":
                return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"process {pid} did not die"
        time.sleep(0.005)


async def test_a_standby_that_died_unreaped_is_passed_over_for_a_fresh_process(
    tmp_path: Path,
) -> None:
    scaler = await with_a_standby()
    try:
        (standby,) = scaler.standby._ready
        os.kill(standby.proc.pid, signal.SIGKILL)
        wait_until_dead(standby.proc.pid)  # blocking: the event loop must not see the exit
        assert standby.proc.returncode is None
        handle = await scaler.start(spec(tmp_path, [LISTENING, READY]))
        assert not handle.warm and handle.pid != standby.proc.pid
        await scaler.wait_ready(handle, 10)
    finally:
        await scaler.aclose()


async def test_a_standby_killed_as_it_takes_its_model_is_replaced_by_a_fresh_process(
    tmp_path: Path,
) -> None:
    scaler = await with_a_standby()
    try:
        (standby,) = scaler.standby._ready
        steps = [{"standby_dies": int(signal.SIGKILL)}, LISTENING, READY]
        handle = await scaler.start(spec(tmp_path, steps))  # the arguments reach it; it dies
        assert not handle.warm and handle.pid != standby.proc.pid
        await scaler.wait_ready(handle, 10)
        assert standby.proc.returncode == -signal.SIGKILL
    finally:
        await scaler.aclose()


async def test_a_real_replica_without_weights_fails_in_seconds(tmp_path: Path) -> None:
    config = slow_model(tmp_path)
    weights = tmp_path / "weights" / "model.safetensors"
    weights.unlink()
    model = spec(tmp_path, [], name="slow").model_copy(update={"config_path": config})
    scaler = LocalScaler(env=None)
    try:
        handle = await scaler.start(model)
        began = time.monotonic()
        with pytest.raises(ReplicaStartFailed) as caught:
            await scaler.wait_ready(handle, 300)
        assert time.monotonic() - began < 30  # not the 300 s of the timeout
    finally:
        await scaler.aclose()
    assert caught.value.kind is StartFailure.LOAD_FAILED
    assert caught.value.failure is FailureKind.WEIGHTS_MISSING
    assert f"weights file {weights} does not exist" in str(caught.value)


# Run in a child process: it lowers its own descriptor limit, so the test's process keeps its.
OUT_OF_DESCRIPTORS = r"""
import asyncio, json, os, resource, sys
import uvloop
from activator.errors import ReplicaStartFailed
from activator.scalers.local import LocalScaler
from tests.fixtures.specs import model_spec

FAKE = (sys.executable, sys.argv[1])
model = model_spec(config_path=sys.argv[2], startup_timeout_s=10.0)

async def start(scaler, left):
    # use up the descriptors but ``left``; the start then gets what remains
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    for _ in range(left):
        os.close(held.pop())
    try:
        handle = await scaler.start(model)
    except ReplicaStartFailed as exc:
        return {"error": type(exc).__name__, "message": str(exc), "kind": exc.kind.value,
                "status": exc.status_code, "retry_after": exc.retry_after_s}
    finally:
        for fd in held:
            os.close(fd)
    await scaler.wait_ready(handle, 10)
    await scaler.stop(handle, 1)
    return {"started": True}

async def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    scaler = LocalScaler(command=FAKE, listen_timeout_s=10)
    try:
        # none left (EMFILE at once); a few left (uvloop's "Errno -1" half-way); then enough
        print(json.dumps([await start(scaler, left) for left in (0, 4, 64)]))
    finally:
        await scaler.aclose()

uvloop.run(main())
"""


def test_a_start_out_of_file_descriptors_says_so_and_the_next_one_starts(tmp_path: Path) -> None:
    import subprocess

    from tests.servers import ROOT

    steps = spec(tmp_path, [LISTENING, READY]).config_path
    out = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS, FAKE[1], str(steps)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    none_left, few_left, enough = json.loads(out.stdout)
    for failed in (none_left, few_left):
        assert failed["error"] == "OutOfDescriptors", failed
        assert "out of file descriptors (EMFILE) starting a replica" in failed["message"]
        assert "of its limit of 128" in failed["message"] and "Errno -1" not in failed["message"]
        assert (failed["kind"], failed["status"], failed["retry_after"]) == ("platform", 503, 5.0)
    assert enough == {"started": True}
