"""A torch handler put to sleep and woken answers as before; a ``disk`` sleep drops the weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from runtime.handlers.base import WeightsMissing
from runtime.handlers.torch_module import TorchModuleHandler
from runtime.handlers.torch_sleep import TorchWeights, sleep_module, wake_module
from runtime.sleep import SleepLevel
from runtime.tensors import Tensor
from tests.unit.runtime.test_torch_module import handler, weights


def _loaded(tmp_path: Path) -> TorchModuleHandler:
    save_file(weights(0), str(tmp_path / "model.safetensors"))
    h = handler(tmp_path)
    h.load()
    return h


def _predict(h: TorchModuleHandler) -> np.ndarray:
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    return np.asarray(h.predict({"x": Tensor("x", "FP32", x)})["y"].array)


@pytest.mark.parametrize("level", list(SleepLevel))
def test_a_woken_module_gives_the_same_outputs(tmp_path: Path, level: SleepLevel) -> None:
    h = _loaded(tmp_path)
    assert h.can_sleep
    before = _predict(h)
    h.sleep(level)
    h.wake()
    np.testing.assert_array_equal(_predict(h), before)


def test_a_disk_sleep_drops_the_files_tensors_and_a_wake_rereads_them(tmp_path: Path) -> None:
    h = _loaded(tmp_path)
    module = h.module
    h.sleep(SleepLevel.DISK)
    assert h.module is module  # the skeleton is kept
    assert all(p.is_meta for p in module.parameters())
    h.wake()
    assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()])


def test_a_wake_without_the_file_raises_weights_missing(tmp_path: Path) -> None:
    h = _loaded(tmp_path)
    h.sleep(SleepLevel.DISK)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(WeightsMissing):
        h.wake()


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4, bias=False)
        self.b = torch.nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight
        self.register_buffer("scale", torch.full((4,), 2.0), persistent=False)


def test_ties_and_non_persistent_buffers_survive_a_disk_sleep() -> None:
    module = _Tied()
    state = {"a.weight": torch.randn(4, 4)}
    module.load_state_dict(state, strict=False)
    sleep_module(module, SleepLevel.DISK, file_keys={"a.weight", "b.weight"})
    assert module.a.weight is module.b.weight and module.a.weight.is_meta
    wake_module(module, device="cpu", state=state, what="_Tied")
    assert module.a.weight is module.b.weight
    torch.testing.assert_close(module.b.weight.detach(), state["a.weight"])
    torch.testing.assert_close(module.scale, torch.full((4,), 2.0))


def test_the_weights_helper_sleeps_rereads_and_unloads_a_module() -> None:
    """TorchWeights, what both torch handlers hold: a disk sleep drops what the file provided
    and a wake re-reads it; host keeps it; unload lets the module go."""
    state = {"a.weight": torch.randn(4, 4)}
    reads: list[str] = []

    def reread() -> dict[str, torch.Tensor]:
        reads.append("read")
        return state

    helper = TorchWeights(what="_Tied", reread=reread)
    module = _Tied()
    module.load_state_dict(state, strict=False)
    helper.adopt(module, file_keys=state)
    assert helper.device_bytes() == 4 * 4 * 4 + 4 * 4  # the tie counts once, the buffer too
    helper.sleep(SleepLevel.HOST)
    assert helper.asleep is SleepLevel.HOST
    helper.wake()
    assert reads == [] and helper.asleep is None  # host: nothing to re-read
    helper.sleep(SleepLevel.DISK)
    assert module.a.weight.is_meta and helper.device_bytes() == 4 * 4  # the buffer stays
    helper.wake()
    assert reads == ["read"] and module.a.weight is module.b.weight
    torch.testing.assert_close(module.a.weight.detach(), state["a.weight"])
    helper.unload()
    assert helper.module is None


def test_both_torch_handlers_hold_the_weights_helper(tmp_path: Path) -> None:
    from runtime.config import ModelConfig
    from runtime.handlers.hf_encoder import HFEncoderHandler

    h = _loaded(tmp_path)
    assert isinstance(h.weights, TorchWeights) and h.module is h.weights.module
    encoder = HFEncoderHandler(ModelConfig(name="e", handler="hf-encoder", source=str(tmp_path)))
    assert isinstance(encoder.weights, TorchWeights) and encoder.model is None
