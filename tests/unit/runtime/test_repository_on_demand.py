"""Models registered to load on demand (``--load-on-demand``): SLEEPING and serving before any
load, loaded by their first request (the load counted as queue time) or a repository load; a
failed load leaves that model UNAVAILABLE with the reason while the others serve."""

from __future__ import annotations

import pytest

from contracts.replica import ModelStatus
from runtime import repository
from runtime.dataplane import DataPlane
from runtime.errors import ModelNotReady
from runtime.handlers.base import StreamedTensors, WeightsMissing
from runtime.metrics import RuntimeMetrics
from runtime.repository import NOT_LOADED_YET, ModelRepository, ModelState
from runtime.sleep import SleepLevel
from tests.unit.runtime.test_repository_sleep import Sleeper, Sources, _config, _infer


class Missing(Sleeper):
    """A handler whose model ``m`` has no weights file."""

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        if self is Sleeper.made.get("m"):
            raise WeightsMissing("weights file /tier/m/model.safetensors does not exist")
        super().load(tensors=tensors)


@pytest.fixture
def events() -> list[ModelStatus]:
    return []


@pytest.fixture
def plane(monkeypatch: pytest.MonkeyPatch, events: list[ModelStatus]) -> DataPlane:
    monkeypatch.setattr(repository, "create_handler", Sleeper)
    Sleeper.made = {}
    metrics = RuntimeMetrics()
    configs = [_config("m", max_batch_size=4), _config("other")]
    repo = ModelRepository(
        configs,
        metrics,
        Sources(),  # type: ignore[arg-type]
        on_status=events.append,
    )
    repo.defer_loading()
    return DataPlane(repo, metrics)


async def test_registered_models_sleep_unloaded_and_the_server_is_ready(
    plane: DataPlane, events: list[ModelStatus]
) -> None:
    assert Sleeper.made == {}  # nothing loaded
    assert plane.repository_index(ready_only=True) == [
        {"name": n, "version": "1", "state": "SLEEPING", "reason": NOT_LOADED_YET, "level": "disk"}
        for n in ("m", "other")
    ]
    assert NOT_LOADED_YET == "level disk (not loaded yet)"
    assert plane.ready() and plane.model_ready("m", None)
    assert [(e.model, e.state, e.reason, e.level) for e in events] == [
        ("m", "SLEEPING", NOT_LOADED_YET, "disk"),
        ("other", "SLEEPING", NOT_LOADED_YET, "disk"),
    ]


async def test_the_first_request_loads_the_model_and_the_load_is_queue_time(
    plane: DataPlane, events: list[ModelStatus]
) -> None:
    repo = plane.repository
    assert await _infer(plane) == [2.5, 3.5]
    entry = repo.entry("m")
    assert entry.state is ModelState.READY and not entry.deferred
    assert entry.load_seconds is not None
    assert entry.stats.queue.ns >= entry.load_seconds * 1e9  # waited for the load, as for a wake
    assert list(Sleeper.made) == ["m"]  # the other is still not loaded
    assert repo.entry("other").reason == NOT_LOADED_YET
    assert [(e.model, e.state) for e in events[2:]] == [("m", "LOADING"), ("m", "READY")]
    assert await _infer(plane) == [2.5, 3.5]  # loaded once
    assert Sleeper.made["m"].calls == ["predict", "predict"]
    await repo.aclose()


async def test_a_repository_load_loads_it(plane: DataPlane) -> None:
    repo = plane.repository
    await repo.load("other")
    assert repo.entry("other").state is ModelState.READY
    assert await _infer(plane, "other") == [2.5, 3.5]
    await repo.aclose()


async def test_a_sleep_before_the_first_load_keeps_it_registered(plane: DataPlane) -> None:
    repo = plane.repository
    await repo.sleep("m", SleepLevel.HOST)
    assert repo.entry("m").reason == NOT_LOADED_YET and Sleeper.made == {}
    await repo.unload("m")  # a full unload stands: requests no longer load it
    assert repo.entry("m").state is ModelState.UNAVAILABLE
    with pytest.raises(ModelNotReady, match="unavailable"):
        await _infer(plane)
    assert Sleeper.made == {}


async def test_a_failed_load_on_demand_is_unavailable_with_the_reason_and_others_serve(
    plane: DataPlane, monkeypatch: pytest.MonkeyPatch, events: list[ModelStatus]
) -> None:
    monkeypatch.setattr(repository, "create_handler", Missing)
    repo = plane.repository
    with pytest.raises(ModelNotReady, match="failed to load: weights file") as caught:
        await _infer(plane)
    assert caught.value.status_code == 503  # what a failed wake answers
    entry = repo.entry("m")
    assert entry.state is ModelState.UNAVAILABLE
    assert entry.reason == "load failed: weights file /tier/m/model.safetensors does not exist"
    assert entry.failure is not None and entry.failure.value == "weights_missing"
    assert events[-1].state == "UNAVAILABLE" and events[-1].failure == entry.failure
    assert await _infer(plane, "other") == [2.5, 3.5]
    with pytest.raises(ModelNotReady, match="unavailable"):  # not retried by every request
        await _infer(plane)
    # the server stays ready: its other model serves (a group's replica keeps serving the rest)
    assert plane.ready()
    await repo.aclose()


async def test_metadata_routes_load_it_first(plane: DataPlane) -> None:
    # the data plane's metadata comes from the handler: the route asks for a loaded entry first
    entry = await plane.repository.loaded_entry("m")
    assert entry.state is ModelState.READY
    assert plane.model_metadata("m", None)["inputs"][0]["name"] == "x"
    await plane.repository.aclose()
