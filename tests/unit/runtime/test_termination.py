"""``--exit-on-load-failure``'s watcher: the first failed load is written as one line, once.

The statuses come from a real repository loading a real ``Slow`` model (tests/fixtures) whose
weights file is gone, and one that loads and is unloaded; then the message's limit and a
termination-message path that cannot be written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from contracts.replica import FailureKind, ModelStatus
from runtime.config import load_model_configs
from runtime.errors import ModelNotReady
from runtime.metrics import RuntimeMetrics
from runtime.repository import ModelRepository
from runtime.sources import WeightSources
from runtime.termination import (
    EXIT_LOAD_FAILED,
    MESSAGE_LIMIT,
    LoadFailureExit,
    termination_message,
)
from tests.conftest import slow_model


def repository(
    tmp_path: Path, watcher: LoadFailureExit, stops: list[ModelStatus]
) -> ModelRepository:
    def on_status(status: ModelStatus) -> None:
        if watcher(status):
            stops.append(status)

    return ModelRepository(
        load_model_configs(slow_model(tmp_path)),
        RuntimeMetrics(),
        WeightSources(cache_dir=tmp_path / "cache"),
        on_status=on_status,
    )


async def test_a_failed_load_is_written_once_naming_the_model_the_kind_and_the_file(
    tmp_path: Path,
) -> None:
    weights = tmp_path / "weights" / "model.safetensors"
    log_file = tmp_path / "termination-log"
    watcher, stops = LoadFailureExit(log_file), list[ModelStatus]()
    repo = repository(tmp_path, watcher, stops)
    weights.unlink()
    for _ in range(2):  # a second failure stops nothing more and rewrites nothing
        with pytest.raises(ModelNotReady):
            await repo.load("slow")
    await repo.aclose()
    expected = (
        f"model 'slow' could not load (weights_missing): weights file {weights} does not exist"
    )
    assert log_file.read_text() == expected == watcher.message
    assert len(stops) == 1 and stops[0].failure is FailureKind.WEIGHTS_MISSING
    assert EXIT_LOAD_FAILED == 3


async def test_a_load_that_succeeds_and_a_later_unload_are_not_failures(tmp_path: Path) -> None:
    log_file = tmp_path / "termination-log"
    watcher, stops = LoadFailureExit(log_file), list[ModelStatus]()
    repo = repository(tmp_path, watcher, stops)
    await repo.load("slow")
    await repo.unload("slow")
    await repo.aclose()
    assert stops == [] and not watcher.failed and not log_file.exists()


def test_the_message_is_one_line_within_the_kubelets_limit() -> None:
    status = ModelStatus(
        "m", "UNAVAILABLE", "load failed: " + "é" * 5000 + "\nTraceback", FailureKind.LOAD_FAILED
    )
    message = termination_message(status)
    assert message.startswith("model 'm' could not load (load_failed): éé")
    assert "\n" not in message and message.endswith("...")
    assert len(message.encode()) <= MESSAGE_LIMIT
    message.encode().decode()  # cut on a character boundary


def test_a_path_that_cannot_be_written_is_logged_and_the_stop_still_happens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = LoadFailureExit(tmp_path / "no-such-dir" / "termination-log")
    failed = ModelStatus("m", "UNAVAILABLE", "load failed: boom", FailureKind.LOAD_FAILED)
    with caplog.at_level(logging.WARNING, logger="ember.runtime"):
        assert watcher(failed) is True
    assert "cannot write the termination message" in caplog.text
    assert "model 'm' could not load (load_failed): boom" in caplog.text
    assert watcher(failed) is False  # once
    # a load cancelled by the server's own shutdown has no failure kind: not one
    cancelled = ModelStatus("m", "UNAVAILABLE", "load failed: CancelledError: ")
    assert LoadFailureExit(tmp_path / "t")(cancelled) is False


def failed(model: str) -> ModelStatus:
    return ModelStatus(model, "UNAVAILABLE", "load failed: gone", FailureKind.WEIGHTS_MISSING)


def test_without_the_flag_only_every_model_failing_stops_the_server(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    watcher = LoadFailureExit(path, first=False, models=["a", "b"])
    assert watcher(failed("a")) is False  # b may still load
    assert watcher(ModelStatus("b", "READY")) is False
    assert watcher(failed("b")) is True  # a load of b failed later, and a never loaded
    assert watcher.message is not None and "model 'a'" in watcher.message
    assert not path.exists()  # the termination message is --exit-on-load-failure's


def test_a_model_that_loads_again_is_no_longer_failed(tmp_path: Path) -> None:
    watcher = LoadFailureExit(tmp_path / "t", first=False, models=["a", "b"])
    assert watcher(failed("a")) is False
    assert watcher(ModelStatus("a", "LOADING")) is False  # a load tried again
    assert watcher(ModelStatus("a", "READY")) is False
    assert watcher(failed("b")) is False  # a serves
    unloaded = ModelStatus("a", "UNAVAILABLE", "unloaded")
    assert watcher(unloaded) is False  # an operator's unload is no failure


def test_stay_never_stops_the_server(tmp_path: Path) -> None:
    watcher = LoadFailureExit(tmp_path / "t", first=False, models=())
    assert watcher(failed("a")) is False and not watcher.failed
