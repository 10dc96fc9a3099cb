"""The repository hands a model's streamed tensors to its handler's load, and keeps none."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

from runtime import repository
from runtime.config import ModelConfig, TensorSpec
from runtime.handlers.base import ModelHandler, StreamedTensors
from runtime.metrics import RuntimeMetrics
from runtime.repository import ModelRepository, ModelState
from runtime.sources import Localized
from runtime.tensors import Tensor


class _Streamed(dict[str, Any]):
    """A dict that can be watched with a weak reference."""


class Recorder(ModelHandler):
    """A handler that records what its load was given (as a model would adopt the tensors)."""

    platform = "test"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    given: list[StreamedTensors | None] = []

    def __init__(self, config: ModelConfig) -> None:
        pass

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        Recorder.given.append(tensors)

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def warmup_inputs(self) -> dict[str, Tensor] | None:
        return None

    def unload(self) -> None:
        pass


class Sources:
    """Localizes every model with the tensors a stream made."""

    def __init__(self, tensors: StreamedTensors | None) -> None:
        self.tensors = tensors
        self.released = 0

    async def localize(self, config: ModelConfig) -> Localized:
        tensors, self.tensors = self.tensors, None

        def release() -> None:
            self.released += 1

        return Localized(config, {}, release, tensors)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> type[Recorder]:
    monkeypatch.setattr(repository, "create_handler", Recorder)
    Recorder.given = []
    return Recorder


async def test_the_handler_gets_the_streamed_tensors_and_only_it_holds_them(
    recorder: type[Recorder],
) -> None:
    config = ModelConfig(name="m", handler="torch-module", source="/nowhere")
    streamed = _Streamed({"model.safetensors": {"w": object()}})
    watch = weakref.ref(streamed)
    sources = Sources(streamed)
    repo = ModelRepository([config], RuntimeMetrics(), sources)  # type: ignore[arg-type]
    del streamed
    entry = await repo.load("m")
    assert entry.state is ModelState.READY
    assert recorder.given == [watch()] and watch() is not None
    recorder.given.clear()  # what the handler held: the repository holds nothing of them
    gc.collect()
    assert watch() is None and entry.state is ModelState.READY
    await repo.aclose()
    assert sources.released == 1


async def test_a_model_without_a_stream_loads_with_none(recorder: type[Recorder]) -> None:
    config = ModelConfig(name="m", handler="torch-module", source="/nowhere")
    repo = ModelRepository([config], RuntimeMetrics(), Sources(None))  # type: ignore[arg-type]
    await repo.load("m")
    assert recorder.given == [None]
    await repo.aclose()


def test_streamed_tensors_are_taken_once() -> None:
    config = ModelConfig(name="m", handler="torch-module", source="/nowhere")
    tensors = {"model.safetensors": {}}
    local = Localized(config, {}, lambda: None, tensors)
    assert local.take_tensors() is tensors
    assert local.take_tensors() is None


def test_models_to_load_at_start_say_loading_before_anything_else_runs() -> None:
    told: list[tuple[str, str]] = []
    configs = [ModelConfig(name="m", handler="torch-module", source="/nowhere")]
    repo = ModelRepository(
        configs,
        RuntimeMetrics(),
        Sources(None),  # type: ignore[arg-type]
        on_status=lambda s: told.append((s.state, s.reason)),
    )
    assert repo.entry("m").state is ModelState.UNAVAILABLE  # not loaded, not announced
    repo.announce_loading()  # no await: a request that comes before the load begins is told
    assert (repo.entry("m").state, repo.entry("m").reason) == (ModelState.LOADING, "loading")
    assert told == [("LOADING", "loading")]


async def test_a_fetch_says_how_far_it_is_every_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    from runtime.sources import _Progress

    progress = _Progress("m", "s3://models/m")
    progress.total = 400_000_000
    progress.add(100_000_000)
    caplog.set_level("INFO", logger="ember.runtime")
    reporting = asyncio.ensure_future(progress.report_every(0.01))
    try:
        for _ in range(500):
            if any("fetching" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    finally:
        reporting.cancel()
    line = next(r.getMessage() for r in caplog.records if "fetching" in r.getMessage())
    assert line.startswith("model m: fetching s3://models/m: 100.0 of 400.0 MB (25%) in ")
    assert line.endswith("MB/s")
