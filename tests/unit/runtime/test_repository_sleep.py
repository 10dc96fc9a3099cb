"""The repository's sleep levels: a model sleeps, still serves (a request wakes it), and a wake
that fails leaves it UNAVAILABLE while the others serve."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest

from runtime import repository
from runtime.config import ModelConfig, TensorSpec
from runtime.dataplane import DataPlane
from runtime.errors import InvalidInput, ModelNotReady
from runtime.handlers.base import ModelHandler, StreamedTensors, WeightsMissing
from runtime.metrics import RuntimeMetrics
from runtime.protocol import parse_inference_request
from runtime.repository import ModelRepository, ModelState
from runtime.sleep import SleepLevel
from runtime.sources import Localized
from runtime.tensors import Tensor


class Sleeper(ModelHandler):
    """A handler whose weights are one number: ``predict`` adds it; sleeping can drop it."""

    platform = "test"
    can_sleep = True
    inputs = (TensorSpec(name="x", datatype="FP32", shape=(2,)),)
    outputs = (TensorSpec(name="y", datatype="FP32", shape=(2,)),)
    made: dict[str, Sleeper] = {}

    def __init__(self, config: ModelConfig) -> None:
        self.weight: float | None = None
        self.asleep: SleepLevel | None = None
        self.fail_wake = False
        self.gate: threading.Event | None = None  # predict waits on it when set
        self.predicting = threading.Event()
        self.calls: list[str] = []
        Sleeper.made[config.name] = self

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        self.weight = 1.5

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        self.calls.append("predict")
        self.predicting.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        assert self.weight is not None and self.asleep is None, "predict while asleep"
        return {"y": Tensor("y", "FP32", inputs["x"].array + np.float32(self.weight))}

    def warmup_inputs(self) -> dict[str, Tensor] | None:
        return None

    def sleep(self, level: SleepLevel) -> None:
        self.calls.append(f"sleep {level}")
        self.asleep = level
        if level is SleepLevel.DISK:
            self.weight = None

    def wake(self) -> None:
        self.calls.append("wake")
        if self.fail_wake:
            raise WeightsMissing("weights file /tier/m/model.safetensors does not exist")
        self.weight, self.asleep = 1.5, None

    def unload(self) -> None:
        self.weight = None


class Sources:
    async def localize(self, config: ModelConfig) -> Localized:
        return Localized(config, {}, lambda: None)


def _config(name: str, **extra: Any) -> ModelConfig:
    return ModelConfig(name=name, handler="torch-module", source="/nowhere", **extra)


@pytest.fixture
def plane(monkeypatch: pytest.MonkeyPatch) -> DataPlane:
    monkeypatch.setattr(repository, "create_handler", Sleeper)
    Sleeper.made = {}
    metrics = RuntimeMetrics()
    configs = [_config("m", max_batch_size=4), _config("other")]
    repo = ModelRepository(configs, metrics, Sources())  # type: ignore[arg-type]
    return DataPlane(repo, metrics)


def _request(batch: bool = True) -> Any:
    shape = [1, 2] if batch else [2]
    return parse_inference_request(
        {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [1.0, 2.0]}]}
    )


async def _infer(plane: DataPlane, name: str = "m") -> list[float]:
    result = await plane.infer(name, None, _request(name == "m"))
    return [float(v) for v in result.outputs[0][0].array.reshape(-1)]


@pytest.mark.parametrize("level", list(SleepLevel))
async def test_sleep_then_load_wakes_with_the_same_outputs(
    plane: DataPlane, level: SleepLevel
) -> None:
    repo = plane.repository
    await repo.load_all()
    before = await _infer(plane)
    await repo.sleep("m", level)
    entry = repo.entry("m")
    assert entry.state is ModelState.SLEEPING and entry.reason == f"level {level}"
    assert plane.repository_index(ready_only=False)[0] == {
        "name": "m",
        "version": "1",
        "state": "SLEEPING",
        "reason": f"level {level}",
        "level": level.value,  # the same, typed, for the activator
    }
    assert plane.model_ready("m", None) and plane.ready()  # it can serve
    await repo.load("m")
    assert entry.state is ModelState.READY
    assert Sleeper.made["m"].calls[-2:] == [f"sleep {level}", "wake"]
    assert await _infer(plane) == before
    stats = entry.stats.as_dict()["sleep_stats"][level.value]
    assert stats["sleep"]["count"] == 1 and stats["wake"]["count"] == 1
    text = generate_latest(plane.metrics.registry).decode()
    assert f'ember_model_wake_seconds_count{{level="{level}",model="m"}} 1.0' in text
    assert f'ember_model_sleep_seconds_count{{level="{level}",model="m"}} 1.0' in text
    await repo.aclose()


async def test_a_request_to_a_sleeping_model_wakes_it_and_is_answered(plane: DataPlane) -> None:
    repo = plane.repository
    await repo.load_all()
    await repo.sleep("m", SleepLevel.DISK)
    queued_before = repo.entry("m").stats.queue.ns
    assert await _infer(plane) == [2.5, 3.5]
    entry = repo.entry("m")
    assert entry.state is ModelState.READY
    wake_ns = entry.stats.wakes["disk"].ns
    assert entry.stats.queue.ns - queued_before >= wake_ns  # the wake counts as queue time
    await repo.aclose()


async def _a_batch_running(
    plane: DataPlane,
) -> tuple[Sleeper, threading.Event, asyncio.Task[list[float]]]:
    """Models loaded, and a request for ``m`` whose batch runs until the gate returned is set."""
    await plane.repository.load_all()
    handler = Sleeper.made["m"]
    handler.gate = gate = threading.Event()
    request = asyncio.create_task(_infer(plane))
    assert await asyncio.to_thread(handler.predicting.wait, 10)  # the batch is running
    return handler, gate, request


async def test_sleeping_waits_for_the_running_batch(plane: DataPlane) -> None:
    repo = plane.repository
    handler, gate, request = await _a_batch_running(plane)
    sleeping = asyncio.create_task(repo.sleep("m", SleepLevel.HOST))
    for _ in range(20):  # let the sleep get as far as it can
        await asyncio.sleep(0)
    assert repo.entry("m").reason == "going to sleep: level host"
    assert not sleeping.done() and handler.asleep is None
    gate.set()
    assert await request == [2.5, 3.5]
    await sleeping
    assert handler.calls == ["predict", "sleep host"]
    await repo.aclose()


async def test_a_sleep_whose_batches_do_not_finish_leaves_the_model_awake(
    plane: DataPlane,
) -> None:
    repo = plane.repository
    handler, gate, request = await _a_batch_running(plane)
    with pytest.raises(ModelNotReady, match=r"busy: its batches did not finish within 0\.05s"):
        await repo.sleep("m", SleepLevel.DISK, drain_timeout_s=0.05)
    assert repo.entry("m").state is ModelState.READY and handler.asleep is None
    gate.set()
    assert await request == [2.5, 3.5]  # its weights were never taken from under it
    assert handler.calls == ["predict"]
    await repo.aclose()


async def test_a_request_never_reloads_a_model_the_operator_unloaded(plane: DataPlane) -> None:
    repo = plane.repository
    await repo.load_all()
    await repo.sleep("m", SleepLevel.DISK)
    entry = repo.entry("m")
    async with entry.lock:  # the unload, then the request, wait for the model's lock in turn
        unloading = asyncio.create_task(repo.unload("m"))
        request = asyncio.create_task(_infer(plane))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not unloading.done() and not request.done()
    await unloading
    with pytest.raises(ModelNotReady, match="unavailable"):
        await request
    assert entry.state is ModelState.UNAVAILABLE and not entry.wanted
    assert Sleeper.made["m"].calls == ["sleep disk"]  # not woken, not loaded again
    await repo.aclose()


async def test_a_failed_wake_is_unavailable_with_the_reason_and_others_serve(
    plane: DataPlane,
) -> None:
    repo = plane.repository
    await repo.load_all()
    await repo.sleep("m", SleepLevel.DISK)
    Sleeper.made["m"].fail_wake = True
    with pytest.raises(ModelNotReady, match="failed to wake: weights file") as caught:
        await _infer(plane)
    assert caught.value.status_code == 503
    entry = repo.entry("m")
    assert entry.state is ModelState.UNAVAILABLE and entry.reason.startswith("wake failed")
    assert entry.failure is not None and entry.failure.value == "weights_missing"
    assert await _infer(plane, "other") == [2.5, 3.5]
    with pytest.raises(ModelNotReady):
        await _infer(plane)
    await repo.aclose()


async def test_a_model_that_is_not_serving_cannot_sleep(plane: DataPlane) -> None:
    with pytest.raises(ModelNotReady, match="cannot sleep"):
        await plane.repository.sleep("m", SleepLevel.HOST)


class Awake(ModelHandler):
    """A handler with no ``sleep``: a model that can only be unloaded."""

    platform = "test"
    inputs = Sleeper.inputs
    outputs = Sleeper.outputs

    def __init__(self, config: ModelConfig) -> None:
        pass

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        pass

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def warmup_inputs(self) -> dict[str, Tensor] | None:
        return None

    def unload(self) -> None:
        pass


async def test_a_handler_without_sleep_is_a_400(
    plane: DataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository, "create_handler", Awake)
    await plane.repository.load_all()
    with pytest.raises(InvalidInput, match="cannot sleep"):
        await plane.repository.sleep("m", SleepLevel.HOST)
    assert plane.repository.entry("m").state is ModelState.READY
    await plane.repository.aclose()


async def test_a_full_unload_of_a_sleeping_model_releases_it(plane: DataPlane) -> None:
    await plane.repository.load_all()
    await plane.repository.sleep("m", SleepLevel.HOST)
    await plane.repository.unload("m")
    entry = plane.repository.entry("m")
    assert entry.state is ModelState.UNAVAILABLE and entry.handler is None
    await plane.repository.aclose()


async def test_a_model_that_fails_at_start_leaves_the_server_ready_for_the_others(
    plane: DataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(Sleeper):
        def load(self, *, tensors: StreamedTensors | None = None) -> None:
            raise WeightsMissing("weights file /tier/m/model.safetensors does not exist")

    monkeypatch.setattr(
        repository, "create_handler", lambda c: Broken(c) if c.name == "m" else Sleeper(c)
    )
    repo = plane.repository
    await repo.load_all()
    assert repo.entry("m").state is ModelState.UNAVAILABLE and repo.entry("m").failure
    assert plane.ready()  # every model settled, one serves: a group's replica keeps serving
    assert await _infer(plane, "other") == [2.5, 3.5]
    await repo.aclose()


def _waiting_plane(monkeypatch: pytest.MonkeyPatch) -> DataPlane:
    """``m`` batches with a 1.5 s queue delay: a lone request waits it out for company."""
    monkeypatch.setattr(repository, "create_handler", Sleeper)
    metrics = RuntimeMetrics()
    configs = [_config("m", max_batch_size=4, max_queue_delay_ms=1500)]
    return DataPlane(ModelRepository(configs, metrics, Sources()), metrics)  # type: ignore[arg-type]


async def _waiting_request(plane: DataPlane) -> asyncio.Task[list[float]]:
    await plane.repository.load_all()
    request = asyncio.create_task(_infer(plane))
    scheduler = plane.repository.entry("m").scheduler
    assert scheduler is not None
    deadline = time.monotonic() + 10
    while not scheduler.gathering:  # out of the queue, waiting for company
        assert time.monotonic() < deadline, "the request never left the queue"
        await asyncio.sleep(0.005)
    return request


@pytest.mark.parametrize("level", list(SleepLevel))
async def test_a_sleep_during_a_request_waiting_for_its_batch_answers_it_first(
    monkeypatch: pytest.MonkeyPatch, level: SleepLevel
) -> None:
    plane = _waiting_plane(monkeypatch)
    request = await _waiting_request(plane)
    await plane.repository.sleep("m", level)  # waits for the batch, delay included
    assert request.done() and await request == [2.5, 3.5]  # never on weights put away
    assert Sleeper.made["m"].calls == ["predict", f"sleep {level}"]
    assert await _infer(plane) == [2.5, 3.5]  # and the next one wakes it
    await plane.repository.aclose()


async def test_a_full_unload_answers_a_request_waiting_for_its_batch_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plane = _waiting_plane(monkeypatch)
    request = await _waiting_request(plane)
    await asyncio.wait_for(plane.repository.unload("m"), 1)  # not the 1.5 s delay
    with pytest.raises(ModelNotReady, match="unloaded") as caught:
        await asyncio.wait_for(request, 1)
    assert caught.value.headers["Retry-After"]
    assert Sleeper.made["m"].calls == []
