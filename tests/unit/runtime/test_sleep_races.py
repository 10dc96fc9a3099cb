"""Property test: sleeps, wakes, unloads, loads and budget switches interleaved with requests, at
several batching delays. Every request gets its right answer or a retryable 503, never a 500,
never silence; no batch ever runs on weights put away."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import repository
from runtime.budget import DeviceBudget
from runtime.config import ModelConfig, TensorSpec
from runtime.dataplane import DataPlane
from runtime.errors import ModelNotReady, RuntimeServerError
from runtime.handlers.base import ModelHandler, StreamedTensors
from runtime.metrics import RuntimeMetrics
from runtime.protocol import parse_inference_request
from runtime.repository import ModelRepository
from runtime.sleep import SleepLevel
from runtime.sources import Localized
from runtime.tensors import Tensor

MODELS = ("a", "b")
FOOTPRINT = 100  # each; the device budget fits one, the host budget one


class Weights(ModelHandler):
    """A sleepable handler whose weight is one number; predict on weights put away raises."""

    platform = "test"
    can_sleep = measures = True
    inputs = (TensorSpec(name="x", datatype="FP32", shape=(2,)),)
    outputs = (TensorSpec(name="y", datatype="FP32", shape=(2,)),)

    def __init__(self, config: ModelConfig) -> None:
        self.weight: float | None = None
        self.offset = float(MODELS.index(config.name) + 1)

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        self.weight = self.offset

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.weight is None:
            raise RuntimeError("Tensor on device meta is not on the expected device cpu")
        return {"y": Tensor("y", "FP32", inputs["x"].array + np.float32(self.weight))}

    def warmup_inputs(self) -> dict[str, Tensor] | None:
        return None

    def device_bytes(self) -> int:
        return FOOTPRINT

    def sleep(self, level: SleepLevel) -> None:
        self.weight = None

    def wake(self) -> None:
        self.weight = self.offset

    def unload(self) -> None:
        self.weight = None


class Sources:
    async def localize(self, config: ModelConfig) -> Localized:
        return Localized(config, {}, lambda: None)


def _nothing() -> asyncio.Task[None]:
    return asyncio.create_task(asyncio.sleep(0))


OPS = st.one_of(
    st.tuples(st.just("infer"), st.sampled_from(MODELS), st.integers(1, 3)),
    st.tuples(st.just("sleep"), st.sampled_from(MODELS), st.sampled_from(list(SleepLevel))),
    st.tuples(st.just("unload"), st.sampled_from(MODELS)),
    st.tuples(st.just("load"), st.sampled_from(MODELS)),
    st.tuples(st.just("pass"), st.integers(0, 4)),  # let the loop run (ms)
)


async def _scenario(
    ops: list[tuple[Any, ...]], delay_ms: float, batch: int, budget: bool, instances: int
) -> None:
    metrics = RuntimeMetrics()
    configs = [
        ModelConfig(
            name=n,
            handler="torch-module",
            source="/nowhere",
            max_batch_size=batch,
            max_queue_delay_ms=delay_ms,
            instance_count=instances,  # 2: a request runs at once beside a running batch
        )
        for n in MODELS
    ]
    limit = FOOTPRINT if budget else None
    host = FOOTPRINT if budget else None
    repo = ModelRepository(
        configs,
        metrics,
        Sources(),  # type: ignore[arg-type]
        budget=DeviceBudget(limit, metrics=metrics, host_limit=host),
    )
    plane = DataPlane(repo, metrics)
    await repo.load_all()
    requests: list[tuple[str, asyncio.Task[Any]]] = []
    commands: list[asyncio.Task[Any]] = []

    def infer(name: str, items: int) -> None:
        shape = [items, 2] if batch else [2]
        data = [1.0, 2.0] * (items if batch else 1)
        body = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}
        task = asyncio.create_task(plane.infer(name, None, parse_inference_request(body)))
        requests.append((name, task))

    for op in ops:
        kind = op[0]
        if kind == "infer":
            infer(op[1], min(op[2], batch) if batch else 1)
        elif kind == "sleep":
            commands.append(asyncio.create_task(repo.sleep(op[1], op[2])))
        elif kind == "unload":
            commands.append(asyncio.create_task(repo.unload(op[1])))
        elif kind == "load":
            commands.append(asyncio.create_task(repo.load(op[1])))
        else:
            await asyncio.sleep(op[1] / 1000)
    # every request is answered within a bound, before anything is closed
    _, pending = await asyncio.wait([t for _, t in requests] or [_nothing()], timeout=10)
    assert not pending, f"{len(pending)} requests were never answered"
    for name, task in requests:
        exc = task.exception()
        if exc is None:
            rows = task.result().outputs[0][0].array.reshape(-1, 2)
            offset = MODELS.index(name) + 1
            assert rows.tolist() == [[1.0 + offset, 2.0 + offset]] * len(rows), name
        else:
            assert isinstance(exc, RuntimeServerError), repr(exc)
            assert exc.status_code == 503 and exc.headers.get("Retry-After"), repr(exc)
    await asyncio.wait(commands or [_nothing()], timeout=10)
    for task in commands:
        exc = task.exception() if task.done() else None
        assert task.done(), "a command never ended"
        # a command may be refused (a model unloaded meanwhile), never fail otherwise
        assert exc is None or isinstance(exc, ModelNotReady), repr(exc)
    await repo.aclose()


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=st.lists(OPS, min_size=1, max_size=30),
    delay_ms=st.sampled_from([0.0, 1.0, 3.0, 20.0]),
    batch=st.sampled_from([0, 1, 4]),
    budget=st.booleans(),
    instances=st.sampled_from([1, 2]),
)
def test_requests_racing_sleeps_unloads_and_switches_get_right_answers_or_503(
    ops: list[tuple[Any, ...]], delay_ms: float, batch: int, budget: bool, instances: int
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(repository, "create_handler", Weights)
        asyncio.run(_scenario(ops, delay_ms, batch, budget, instances))
