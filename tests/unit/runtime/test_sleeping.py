"""The Sleeper on its own: given entries, a budget, metrics and a status setter, it puts a model
to sleep, wakes it, and says each change through the setter (no repository needed)."""

from __future__ import annotations

import pytest

from contracts.replica import FailureKind, ModelState
from contracts.stats import ModelStats
from runtime.budget import DeviceBudget
from runtime.config import ModelConfig
from runtime.entries import ModelEntry
from runtime.errors import InvalidInput, ModelNotReady
from runtime.handlers.base import ModelHandler, WeightsMissing
from runtime.metrics import RuntimeMetrics
from runtime.sleep import SleepLevel
from runtime.sleeping import Sleeper


class Weights(ModelHandler):
    platform = "test"
    can_sleep = True
    inputs = outputs = ()

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.calls: list[str] = []
        self.fail_wake = False

    def sleep(self, level: SleepLevel) -> None:
        self.calls.append(f"sleep {level}")

    def wake(self) -> None:
        self.calls.append("wake")
        if self.fail_wake:
            raise WeightsMissing("the weights file is gone")

    def unload(self) -> None:
        self.calls.append("unload")


class Fixed(Weights):
    can_sleep = False


Said = list[tuple[str, ModelState, str, FailureKind | None]]


def _sleeper(handler: type[Weights] = Weights) -> tuple[Sleeper, ModelEntry, Said]:
    config = ModelConfig(name="m", handler="torch-module", source="/nowhere")
    entry = ModelEntry(config=config, stats=ModelStats("m", "1"), state=ModelState.READY)
    entry.handler = handler(config)
    said: Said = []

    def set_status(
        e: ModelEntry, state: ModelState, reason: str, failure: FailureKind | None = None
    ) -> None:
        e.state, e.reason, e.failure = state, reason, failure
        said.append((e.config.name, state, reason, failure))

    metrics = RuntimeMetrics()
    sleeper = Sleeper(
        {"m": entry},
        budget=DeviceBudget(None, metrics=metrics),
        metrics=metrics,
        set_status=set_status,
    )
    return sleeper, entry, said


async def test_a_sleep_and_a_wake_go_through_the_handler_and_the_status_setter() -> None:
    sleeper, entry, said = _sleeper()
    await sleeper.sleep(entry, SleepLevel.HOST)
    assert entry.state is ModelState.SLEEPING and entry.asleep is SleepLevel.HOST
    await sleeper.sleep(entry, SleepLevel.DISK)  # asleep at host, asked for disk: it goes down
    assert entry.asleep is SleepLevel.DISK
    async with entry.lock:
        await sleeper.wake(entry)
    assert entry.state is ModelState.READY and entry.asleep is None
    assert isinstance(entry.handler, Weights)
    assert entry.handler.calls == ["sleep host", "sleep disk", "wake"]
    assert [(state, reason) for _, state, reason, _ in said] == [
        (ModelState.SLEEPING, "going to sleep: level host"),
        (ModelState.SLEEPING, "level host"),
        (ModelState.SLEEPING, "level disk"),
        (ModelState.SLEEPING, "waking: level disk"),
        (ModelState.READY, ""),
    ]
    assert entry.stats.as_dict()  # the sleep and the wake were booked on its stats


async def test_a_handler_that_cannot_sleep_is_refused_and_stays_ready() -> None:
    sleeper, entry, said = _sleeper(Fixed)
    with pytest.raises(InvalidInput, match="cannot sleep"):
        await sleeper.sleep(entry, SleepLevel.HOST)
    assert entry.state is ModelState.READY and said == []


async def test_a_failed_wake_leaves_the_model_unavailable_with_the_kind_of_failure() -> None:
    sleeper, entry, said = _sleeper()
    await sleeper.sleep(entry, SleepLevel.DISK)
    handler = entry.handler
    assert isinstance(handler, Weights)
    handler.fail_wake = True
    async with entry.lock:
        with pytest.raises(ModelNotReady, match="failed to wake: the weights file is gone"):
            await sleeper.wake(entry)
    assert entry.state is ModelState.UNAVAILABLE and entry.handler is None
    assert handler.calls[-1] == "unload"
    assert said[-1][3] is FailureKind.WEIGHTS_MISSING
