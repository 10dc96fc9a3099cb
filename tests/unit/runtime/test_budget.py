"""Several torch models under a device memory budget: the least recently used awake ones sleep,
after their batches, so that a wanted one wakes; every request gets its own model's outputs."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import generate_latest
from safetensors.torch import save_file

from contracts.sizes import parse_bytes
from runtime import repository
from runtime.budget import DeviceBudget
from runtime.config import ModelConfig
from runtime.dataplane import DataPlane
from runtime.handlers.base import StreamedTensors
from runtime.handlers.torch_module import TorchModuleHandler
from runtime.handlers.torch_sleep import device_bytes
from runtime.metrics import RuntimeMetrics
from runtime.protocol import parse_inference_request
from runtime.repository import ModelRepository, ModelState
from runtime.sleep import SleepLevel
from runtime.sources import Localized
from runtime.tensors import Tensor
from tests.fixtures import meta_modules as fx
from tests.unit.runtime.test_torch_module import weights

FOOTPRINT = device_bytes(fx.Net(), device="cpu")
X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)


class Gated(TorchModuleHandler):
    """The torch-module handler; ``predict`` of a model named in ``gates`` waits for its event,
    and every call of ``predict``, ``sleep`` and ``wake`` is logged by model."""

    gates: dict[str, threading.Event] = {}
    predicting: dict[str, threading.Event] = {}
    log: list[str] = []

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        Gated.log.append(f"load {self.config.name}")
        super().load(tensors=tensors)
        Gated.predicting[self.config.name] = threading.Event()

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        name = self.config.name
        Gated.log.append(f"predict {name}")
        Gated.predicting[name].set()
        gate = Gated.gates.get(name)
        if gate is not None:
            assert gate.wait(10)
        assert self.weights.asleep is None, f"{name} predicts while asleep"
        return super().predict(inputs)

    def sleep(self, level: Any) -> None:
        Gated.log.append(f"sleep {self.config.name}" + (f" {level}" if self.weights.asleep else ""))
        super().sleep(level)

    def wake(self) -> None:
        Gated.log.append(f"wake {self.config.name}")
        super().wake()


class Sources:
    async def localize(self, config: ModelConfig) -> Localized:
        return Localized(config, {}, lambda: None)


def _config(name: str, source: Path, features: int) -> ModelConfig:
    return ModelConfig(
        name=name,
        handler="torch-module",
        source=str(source),
        device="cpu",
        options={"module": "tests.fixtures.meta_modules:Net", "kwargs": {"features": features}},
        inputs=[{"name": "x", "datatype": "FP32", "shape": [8]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [3]}],
        max_batch_size=4,
    )


def _expected(seed: int) -> np.ndarray:
    """What the 8-feature model with ``weights(seed)`` answers for X."""
    net = fx.Net()
    net.load_state_dict(weights(seed))
    with torch.no_grad():
        return np.asarray(net(torch.from_numpy(X)).numpy())


def _plane(
    tmp_path: Path,
    names: list[str],
    budget: int,
    features: dict[str, int] | None = None,
    host_budget: int | None = None,
) -> DataPlane:
    """Models of ``names`` in config order, the i-th with ``weights(i)`` (default 8 features)."""
    configs = []
    for seed, name in enumerate(names):
        (tmp_path / name).mkdir()
        width = (features or {}).get(name, 8)
        torch.manual_seed(seed)
        state = {k: torch.randn_like(v) for k, v in fx.Net(features=width).state_dict().items()}
        save_file(state, str(tmp_path / name / "model.safetensors"))
        configs.append(_config(name, tmp_path / name, width))
    metrics = RuntimeMetrics()
    repo = ModelRepository(
        configs,
        metrics,
        Sources(),  # type: ignore[arg-type]
        budget=DeviceBudget(budget, metrics=metrics, host_limit=host_budget),
    )
    return DataPlane(repo, metrics)


@pytest.fixture(autouse=True)
def gated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repository, "create_handler", Gated)
    Gated.gates, Gated.predicting, Gated.log = {}, {}, []


async def _infer(plane: DataPlane, name: str) -> np.ndarray:
    request = parse_inference_request(
        {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": X.ravel().tolist()}]}
    )
    result = await plane.infer(name, None, request)
    return np.asarray(result.outputs[0][0].array)


def _states(plane: DataPlane) -> dict[str, ModelState]:
    return {e.config.name: e.state for e in plane.repository.entries()}


def _reasons(plane: DataPlane) -> dict[str, str]:
    return {e.config.name: e.reason for e in plane.repository.entries()}


def _gauge(plane: DataPlane, name: str) -> float:
    for line in generate_latest(plane.metrics.registry).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    raise AssertionError(f"no gauge {name}")


async def test_a_request_for_a_sleeper_sleeps_the_awake_one_after_its_batch(
    tmp_path: Path,
) -> None:
    plane = _plane(tmp_path, ["a", "b"], budget=FOOTPRINT * 3 // 2)
    repo = plane.repository
    await repo.load_all()
    assert _states(plane) == {"a": ModelState.READY, "b": ModelState.SLEEPING}
    assert repo.entry("b").reason == "level host"
    Gated.gates["a"] = threading.Event()
    running = asyncio.create_task(_infer(plane, "a"))
    assert await asyncio.to_thread(Gated.predicting["a"].wait, 10)  # a's batch is running
    wanted = asyncio.create_task(_infer(plane, "b"))
    for _ in range(20):  # let the swap get as far as it can
        await asyncio.sleep(0)
    assert repo.entry("a").reason == "going to sleep: level host"
    assert not wanted.done() and "sleep a" not in Gated.log
    Gated.gates["a"].set()
    np.testing.assert_allclose(await running, _expected(0), rtol=1e-5)
    np.testing.assert_allclose(await wanted, _expected(1), rtol=1e-5)
    assert Gated.log[-4:] == ["predict a", "sleep a", "wake b", "predict b"]
    assert _states(plane) == {"a": ModelState.SLEEPING, "b": ModelState.READY}
    np.testing.assert_allclose(await _infer(plane, "a"), _expected(0), rtol=1e-5)  # and back
    assert _states(plane) == {"a": ModelState.READY, "b": ModelState.SLEEPING}
    text = generate_latest(plane.metrics.registry).decode()
    assert f"ember_device_memory_hot_bytes {float(FOOTPRINT)}" in text
    assert f"ember_device_memory_budget_bytes {float(FOOTPRINT * 3 // 2)}" in text
    await repo.aclose()


async def test_concurrent_requests_for_two_models_that_cannot_both_fit_are_all_answered_right(
    tmp_path: Path,
) -> None:
    plane = _plane(tmp_path, ["a", "b"], budget=FOOTPRINT * 3 // 2)
    await plane.repository.load_all()
    names = ["a", "b"] * 12
    results = await asyncio.gather(*(_infer(plane, n) for n in names))
    expected = {"a": _expected(0), "b": _expected(1)}
    assert not np.allclose(expected["a"], expected["b"])
    for name, got in zip(names, results, strict=True):
        np.testing.assert_allclose(got, expected[name], rtol=1e-5)
    hot = [n for n, s in _states(plane).items() if s is ModelState.READY]
    assert len(hot) == 1
    await plane.repository.aclose()


async def test_a_model_larger_than_the_budget_is_unavailable_and_the_other_serves(
    tmp_path: Path,
) -> None:
    plane = _plane(tmp_path, ["big", "a"], budget=FOOTPRINT * 3 // 2, features={"big": 16})
    big = device_bytes(fx.Net(features=16), device="cpu")
    repo = plane.repository
    await repo.load_all()
    entry = repo.entry("big")
    assert entry.state is ModelState.UNAVAILABLE
    assert entry.reason == (
        f"load failed: model 'big' needs {big / 1024:.1f} KiB ({big} bytes) of device memory, "
        f"more than the whole device memory budget of {FOOTPRINT * 3 // 2 / 1024:.1f} KiB "
        f"({FOOTPRINT * 3 // 2} bytes)"
    )
    assert entry.failure is not None and entry.failure.value == "out_of_memory"
    np.testing.assert_allclose(await _infer(plane, "a"), _expected(1), rtol=1e-5)
    await repo.aclose()


async def test_models_past_the_budget_at_start_sleep_in_config_order(tmp_path: Path) -> None:
    plane = _plane(tmp_path, ["a", "b", "c"], budget=FOOTPRINT * 5 // 2)
    await plane.repository.load_all()
    assert _states(plane) == {
        "a": ModelState.READY,
        "b": ModelState.READY,
        "c": ModelState.SLEEPING,
    }
    assert plane.ready()  # a sleeper still serves
    await plane.repository.aclose()


async def test_the_least_recently_used_awake_model_is_the_one_put_to_sleep(
    tmp_path: Path,
) -> None:
    plane = _plane(tmp_path, ["a", "b", "c"], budget=FOOTPRINT * 5 // 2)
    await plane.repository.load_all()
    await _infer(plane, "b")
    await _infer(plane, "a")  # b is now the least recently used awake model
    np.testing.assert_allclose(await _infer(plane, "c"), _expected(2), rtol=1e-5)
    assert _states(plane) == {
        "a": ModelState.READY,
        "b": ModelState.SLEEPING,
        "c": ModelState.READY,
    }
    await _infer(plane, "b")  # now a is
    assert _states(plane)["a"] is ModelState.SLEEPING
    await plane.repository.aclose()


def test_sizes_parse_with_binary_and_decimal_units() -> None:
    assert parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("512Mi") == 512 * 2**20
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("4096") == 4096
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


async def test_past_the_host_budget_the_least_recently_used_host_sleeper_goes_down_to_disk(
    tmp_path: Path,
) -> None:
    plane = _plane(
        tmp_path, ["a", "b", "c"], budget=FOOTPRINT * 3 // 2, host_budget=FOOTPRINT * 3 // 2
    )
    repo = plane.repository
    await repo.load_all()  # a awake; b sleeps at host; c sleeps, and b makes room at host for it
    assert _reasons(plane) == {"a": "", "b": "level disk", "c": "level host"}
    assert "sleep b disk" in Gated.log  # from host straight down, never woken for it
    assert _gauge(plane, "ember_host_memory_sleeping_bytes") == FOOTPRINT
    assert _gauge(plane, "ember_host_memory_budget_bytes") == FOOTPRINT * 3 // 2
    np.testing.assert_allclose(await _infer(plane, "b"), _expected(1), rtol=1e-5)
    # b woke from disk; a sleeps at host for room, c (the least recently used) went to disk
    assert _reasons(plane) == {"a": "level host", "b": "", "c": "level disk"}
    assert _gauge(plane, "ember_host_memory_sleeping_bytes") == FOOTPRINT
    for name, seed in (("c", 2), ("a", 0), ("b", 1)):
        np.testing.assert_allclose(await _infer(plane, name), _expected(seed), rtol=1e-5)
    assert _reasons(plane) == {"a": "level host", "b": "", "c": "level disk"}
    await repo.aclose()
    assert _gauge(plane, "ember_host_memory_sleeping_bytes") == 0


async def test_the_host_sleeper_being_woken_is_never_the_one_sent_down_for_room(
    tmp_path: Path,
) -> None:
    plane = _plane(tmp_path, ["a", "b"], budget=FOOTPRINT * 3 // 2, host_budget=FOOTPRINT * 3 // 2)
    await plane.repository.load_all()
    assert _reasons(plane) == {"a": "", "b": "level host"}
    # b leaves host memory as it wakes: a fits there in its place, and b is not sent to disk
    got = await asyncio.wait_for(_infer(plane, "b"), 10)
    np.testing.assert_allclose(got, _expected(1), rtol=1e-5)
    assert _reasons(plane) == {"a": "level host", "b": ""}
    assert not any(line.endswith(" disk") for line in Gated.log)
    await plane.repository.aclose()


async def test_a_model_larger_than_the_whole_host_budget_sleeps_at_disk(tmp_path: Path) -> None:
    plane = _plane(tmp_path, ["a", "b"], budget=FOOTPRINT * 3 // 2, host_budget=FOOTPRINT // 2)
    repo = plane.repository
    await repo.load_all()
    assert _reasons(plane) == {"a": "", "b": "level disk"}
    np.testing.assert_allclose(await _infer(plane, "b"), _expected(1), rtol=1e-5)
    assert _reasons(plane) == {"a": "level disk", "b": ""}
    assert _gauge(plane, "ember_host_memory_sleeping_bytes") == 0
    await repo.aclose()


async def test_without_a_host_budget_the_models_put_away_sleep_at_host(tmp_path: Path) -> None:
    plane = _plane(tmp_path, ["a", "b", "c"], budget=FOOTPRINT * 3 // 2)
    await plane.repository.load_all()
    assert _reasons(plane) == {"a": "", "b": "level host", "c": "level host"}
    assert _gauge(plane, "ember_host_memory_sleeping_bytes") == 2 * FOOTPRINT
    assert _gauge(plane, "ember_host_memory_budget_bytes") == 0
    await plane.repository.aclose()


async def test_a_load_on_demand_puts_the_least_recently_used_awake_model_to_sleep_first(
    tmp_path: Path,
) -> None:
    plane = _plane(tmp_path, ["a", "b", "c"], budget=FOOTPRINT * 5 // 2)
    repo = plane.repository
    repo.defer_loading()
    assert Gated.log == []
    for name, seed in (("a", 0), ("b", 1)):
        np.testing.assert_allclose(await _infer(plane, name), _expected(seed), rtol=1e-5)
    await _infer(plane, "a")  # b is now the least recently used
    np.testing.assert_allclose(await _infer(plane, "c"), _expected(2), rtol=1e-5)
    # room was made by the size of c's weights file, before c loaded
    assert Gated.log.index("sleep b") < Gated.log.index("load c")
    assert _states(plane) == {
        "a": ModelState.READY,
        "b": ModelState.SLEEPING,
        "c": ModelState.READY,
    }
    assert _gauge(plane, "ember_device_memory_hot_bytes") == 2 * FOOTPRINT
    await repo.aclose()


async def test_a_sleep_asked_at_host_keeps_the_host_budget_too(tmp_path: Path) -> None:
    # no device budget: two models awake, a host budget that holds one of them
    plane = _plane(tmp_path, ["a", "b"], budget=None, host_budget=FOOTPRINT * 3 // 2)
    repo = plane.repository
    await repo.load_all()
    await repo.sleep("a", SleepLevel.HOST)
    await _infer(plane, "b")  # b used after a: a is the least recently used
    await repo.sleep("b", SleepLevel.HOST)
    assert _reasons(plane) == {"a": "level disk", "b": "level host"}  # a went down for b
    assert _gauge(plane, "ember_host_memory_sleeping_bytes") == FOOTPRINT
    await repo.aclose()


async def test_host_to_disk_goes_down_without_waking_and_a_lighter_level_is_no_change(
    tmp_path: Path,
) -> None:
    plane = _plane(tmp_path, ["a", "b"], budget=FOOTPRINT * 3 // 2)
    repo = plane.repository
    await repo.load_all()  # a awake, b asleep at host for room
    Gated.log.clear()
    await repo.sleep("b", SleepLevel.DISK)
    assert Gated.log == ["sleep b disk"]  # a never put to sleep to wake b first
    assert _reasons(plane) == {"a": "", "b": "level disk"}
    await repo.sleep("b", SleepLevel.HOST)  # asleep deeper already: it stays
    assert _reasons(plane) == {"a": "", "b": "level disk"} and Gated.log == ["sleep b disk"]
    np.testing.assert_allclose(await _infer(plane, "b"), _expected(1), rtol=1e-5)
    await repo.aclose()
