"""On a CUDA device a ``host`` sleep moves the weights to pinned host memory and gives the device
memory back; a wake answers as before (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import torch

from runtime.config import load_model_configs
from runtime.handlers.torch_module import TorchModuleHandler
from runtime.sleep import SleepLevel
from runtime.tensors import Tensor
from tests.conftest import MLP_CONFIG


def test_host_sleep_pins_the_weights_and_frees_the_device() -> None:
    (config,) = load_model_configs(MLP_CONFIG)
    handler = TorchModuleHandler(config.model_copy(update={"device": "cuda"}))
    handler.load()
    assert handler.module is not None
    inputs = {"input": Tensor("input", "FP32", np.ones((4, 784), dtype=np.float32))}
    before = handler.predict(inputs)["logits"].array
    held = torch.cuda.memory_allocated()
    handler.sleep(SleepLevel.HOST)
    for p in handler.module.parameters():
        assert p.device.type == "cpu" and p.is_pinned()
    assert torch.cuda.memory_allocated() < held
    handler.wake()
    assert all(p.device.type == "cuda" for p in handler.module.parameters())
    np.testing.assert_array_equal(handler.predict(inputs)["logits"].array, before)
    handler.sleep(SleepLevel.DISK)
    handler.wake()
    np.testing.assert_array_equal(handler.predict(inputs)["logits"].array, before)
