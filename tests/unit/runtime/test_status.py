"""A model's state changes reach ``on_status`` with the kind of a failed load, told by type.

The models are real ``torch-module`` models made in ``tmp_path`` (tests/fixtures/models.py's
``Slow``), loaded by the real repository, handler and weight sources; then the failure kinds of
the other exception types, and the status channel itself over a real pipe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from contracts.replica import FailureKind, ModelStatus, decode, encode
from runtime import repository
from runtime.config import ModelConfig, load_model_configs
from runtime.dataplane import DataPlane
from runtime.errors import ConfigError, ModelNotReady
from runtime.handlers.base import HandlerLoadError, ModelHandler
from runtime.metrics import RuntimeMetrics
from runtime.repository import ModelRepository
from runtime.sources import WeightSources
from runtime.status import StatusChannel, failure_kind
from tests.conftest import slow_model
from weight_cache import errors as cache


class Model:
    """A one-model repository over a ``Slow`` model in ``tmp_path``; ``said`` is what it told."""

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.config_path = slow_model(tmp_path)
        if options:
            raw = json.loads(self.config_path.read_text())
            raw["options"].update(options)
            self.config_path.write_text(json.dumps(raw))
        self.weights = tmp_path / "weights" / "model.safetensors"
        self.said: list[ModelStatus] = []
        self.metrics = RuntimeMetrics()
        self.repo = ModelRepository(
            load_model_configs(self.config_path),
            self.metrics,
            WeightSources(cache_dir=tmp_path / "cache"),
            on_status=self.said.append,
        )

    async def load(self) -> None:
        await self.repo.load("slow")

    async def fails(self) -> ModelStatus:
        with pytest.raises(ModelNotReady):
            await self.repo.load("slow")
        assert [s.state for s in self.said[-2:]] == ["LOADING", "UNAVAILABLE"]
        return self.said[-1]


async def test_a_load_says_loading_then_ready_with_its_phases(tmp_path: Path) -> None:
    model = Model(tmp_path)
    await model.load()
    loading, ready = model.said
    assert loading == ModelStatus("slow", "LOADING", "loading")
    assert ready.state == "READY" and ready.failure is None and ready.reason == ""
    assert {"imports", "load", "warmup"} <= set(ready.phases)
    assert ready.phases == model.repo.entry("slow").load_phases
    assert decode(encode(ready)) == ready  # what the server writes to its status channel
    await model.repo.aclose()
    assert [(s.state, s.reason) for s in model.said[2:]] == [
        ("UNLOADING", "unloading"),
        ("UNAVAILABLE", "unloaded"),
    ]
    assert all(s.failure is None for s in model.said)


async def test_a_missing_weights_file(tmp_path: Path) -> None:
    model = Model(tmp_path)
    model.weights.unlink()
    said = await model.fails()
    assert said.failure is FailureKind.WEIGHTS_MISSING
    assert str(model.weights) in said.reason and said.reason.startswith("load failed: ")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"\x00garbage, not a safetensors header" * 100, id="garbage"),
        pytest.param(lambda b: b[: len(b) - 2], id="truncated"),
        pytest.param(lambda b: (1 << 40).to_bytes(8, "little") + b[8:], id="header-too-large"),
        pytest.param(lambda b: b"", id="empty"),
    ],
)
async def test_a_corrupt_safetensors_file(tmp_path: Path, damage: Any) -> None:
    model = Model(tmp_path)
    model.weights.write_bytes(damage(model.weights.read_bytes()))
    said = await model.fails()
    assert said.failure is FailureKind.WEIGHTS_CORRUPT, said
    assert str(model.weights) in said.reason


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("nowhere.py:Slow", None),  # no such file
        ("no_such_package_ember_test.models:Slow", None),  # no such module
        ("broken.py:Slow", "def oops(:\n"),  # it does not compile
        ("raises.py:Slow", "import no_such_package_ember_test\n"),  # its imports fail
        ("empty.py:Slow", "x = 1\n"),  # no such class in it
        ("no-colon.py", None),  # not a class path
    ],
)
async def test_a_class_path_that_does_not_import(
    tmp_path: Path, module: str, source: str | None
) -> None:
    if source is not None:
        (tmp_path / module.partition(":")[0]).write_text(source)
    model = Model(tmp_path, module=module)
    said = await model.fails()
    assert said.failure is FailureKind.BAD_CONFIG, said


async def test_the_index_carries_the_failure_and_a_reload_clears_it(tmp_path: Path) -> None:
    model = Model(tmp_path)
    kept = model.weights.read_bytes()
    model.weights.unlink()
    await model.fails()
    dataplane = DataPlane(model.repo, model.metrics)
    (entry,) = dataplane.repository_index(ready_only=False)
    assert entry["state"] == "UNAVAILABLE" and str(model.weights) in entry["reason"]
    assert entry["failure"] == "weights_missing" and entry["version"] == "1"
    model.weights.write_bytes(kept)
    await model.load()
    (entry,) = dataplane.repository_index(ready_only=False)
    assert entry == {
        "name": "slow",
        "version": "1",
        "state": "READY",
        "reason": "",
    }  # the failure gone with the failed load
    assert model.said[-1].state == "READY"
    await model.repo.aclose()


class Raises(ModelHandler):
    """A handler whose load raises what the test sets."""

    error: BaseException = RuntimeError()
    platform = "test"
    inputs = outputs = ()

    def __init__(self, config: ModelConfig) -> None:
        pass

    def load(self, **_: Any) -> None:
        raise Raises.error

    def unload(self) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (torch.OutOfMemoryError("CUDA out of memory"), FailureKind.OUT_OF_MEMORY),
        (MemoryError(), FailureKind.OUT_OF_MEMORY),
        (cache.DeviceMemoryFull("no room on cuda:0"), FailureKind.OUT_OF_MEMORY),
        (cache.ObjectMissing("s3://b/m/model.safetensors"), FailureKind.WEIGHTS_MISSING),
        (cache.CorruptCheckpoint("sha256 mismatch"), FailureKind.WEIGHTS_CORRUPT),
        (cache.StoreUnavailable("503 after 5 tries"), FailureKind.STORE_UNAVAILABLE),
        (cache.StoreTooSlow("bytes 0-8 under 256 KiB/s"), FailureKind.STORE_UNAVAILABLE),
        (cache.DiskFull("tier full"), FailureKind.DISK_FULL),
        (ConfigError("bad options"), FailureKind.BAD_CONFIG),
        (cache.BadSetting("EMBER_STORE_MIN_RATE_KIB_S: -1"), FailureKind.BAD_CONFIG),
        (HandlerLoadError("something else"), FailureKind.LOAD_FAILED),
        (ValueError("a bug in the model"), FailureKind.LOAD_FAILED),
    ],
)
async def test_the_failure_kind_is_told_by_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, kind: FailureKind
) -> None:
    monkeypatch.setattr(repository, "create_handler", Raises)
    Raises.error = error
    model = Model(tmp_path)
    assert (await model.fails()).failure is kind


def _caused(outer: Exception, cause: BaseException) -> Exception:
    try:
        raise outer from cause
    except Exception as exc:
        return exc


def test_a_wrapped_error_is_told_by_its_cause() -> None:
    # an out-of-memory error anywhere in the chain wins; else the first typed one
    oom = _caused(HandlerLoadError("MLP(**kwargs) failed"), torch.OutOfMemoryError("OOM"))
    assert failure_kind(oom) is FailureKind.OUT_OF_MEMORY
    disk = _caused(HandlerLoadError("cannot read weights"), cache.DiskFull("full"))
    assert failure_kind(disk) is FailureKind.DISK_FULL
    # the message never decides: a "missing" in the text of an untyped error is not a kind
    assert failure_kind(RuntimeError("weights file missing")) is FailureKind.LOAD_FAILED


async def test_cancelling_a_load_is_no_failure_of_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    monkeypatch.setattr(repository, "create_handler", Raises)
    Raises.error = asyncio.CancelledError()
    model = Model(tmp_path)
    with pytest.raises(asyncio.CancelledError):
        await model.load()
    assert model.said[-1].state == "UNAVAILABLE" and model.said[-1].failure is None


# ----------------------------------------------------------------------------- the channel
def test_the_channel_writes_one_line_per_event_to_its_fd() -> None:
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)  # as a replica is given it
    with os.fdopen(read_fd, "rb") as pipe:
        with os.fdopen(write_fd, "wb") as end:
            channel = StatusChannel(end.fileno())
            assert not os.get_inheritable(write_fd)  # not handed on to what the replica starts
            events = [ModelStatus("m", "LOADING", "loading"), ModelStatus("m", "READY")]
            for event in events:
                channel.send(event)
        assert [decode(line) for line in pipe] == events


def test_a_channel_whose_reader_left_turns_itself_off() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with os.fdopen(write_fd, "wb") as end:
        channel = StatusChannel(end.fileno())
        channel.send(ModelStatus("m", "LOADING"))  # EPIPE: logged, not raised
        assert channel.fd is None
        channel.send(ModelStatus("m", "READY"))


def test_without_a_status_fd_nothing_is_written() -> None:
    StatusChannel(None).send(ModelStatus("m", "READY"))
