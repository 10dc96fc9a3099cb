"""``torch-module``: a user's ``nn.Module`` class, its constructor config and safetensors weights.

Options::

    module: mlp.py:MLP          # or package.module:Class; a file path is relative to the config
    kwargs: {in_features: 784}  # passed to the constructor
    weights: model.safetensors  # inside the model's source directory (default: model.safetensors)
    strict: true                # every parameter must be in the file, and nothing else; with
                                # false, the file's extra tensors are ignored and parameters it
                                # lacks get the module's own initialisation

The module is built without initialising its parameters and adopts the file's tensors (see
``meta_build``); a constructor that needs real values is built as before.

Inputs are passed to ``forward`` positionally in the order the config lists them; a returned tensor,
tuple or dict is matched to the configured outputs by position (or by name, for a dict).
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.config import ModelConfig, TensorSpec
from runtime.errors import ConfigError
from runtime.handlers.base import (
    ModelHandler,
    StreamedTensors,
    import_object,
    parse_options,
    pick_device,
)
from runtime.handlers.meta_build import load_module
from runtime.handlers.options import TorchModuleOptions
from runtime.handlers.torch_sleep import TorchWeights
from runtime.handlers.torch_util import from_torch, load_safetensors, streamed_file, to_torch
from runtime.sleep import SleepLevel
from runtime.tensors import NUMPY_DTYPES, Tensor


class TorchModuleHandler(ModelHandler):
    platform = "pytorch"
    can_sleep = measures = takes_tensors = True

    def __init__(self, config: ModelConfig) -> None:
        if not config.inputs or not config.outputs:
            raise ConfigError(
                f"model '{config.name}': the torch-module handler needs 'inputs' and 'outputs'"
            )
        self.config = config
        self.options = parse_options(TorchModuleOptions, config)
        self.inputs: tuple[TensorSpec, ...] = config.inputs
        self.outputs: tuple[TensorSpec, ...] = config.outputs
        self.weights = TorchWeights(what=self.options.module, reread=self._reread)

    @property
    def device(self) -> str:
        return self.weights.device

    @property
    def module(self) -> torch.nn.Module | None:
        return self.weights.module

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        self.weights.device = pick_device(self.config.device)
        cls = import_object(self.options.module, base_dir=self.config.base_dir)
        state = load_safetensors(
            self.config.local_source() / self.options.weights,
            self.device,
            streamed=streamed_file(tensors, self.options.weights),
        )
        module = load_module(
            lambda: cls(**self.options.kwargs),
            state,
            device=self.device,
            strict=self.options.strict,
            init_missing=not self.options.strict,
            what=self.options.module,
        )
        self.weights.adopt(module, file_keys=state)

    def _reread(self) -> dict[str, torch.Tensor]:
        return load_safetensors(self.config.local_source() / self.options.weights, self.device)

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self.module is not None, "predict before load"
        args = [to_torch(inputs[spec.name], self.device) for spec in self.inputs]
        with torch.inference_mode():
            result = self.module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        outputs: dict[str, Tensor] = {}
        for i, spec in enumerate(self.outputs):
            value = result[spec.name] if isinstance(result, dict) else result[i]
            outputs[spec.name] = from_torch(spec.name, value, spec.datatype)
        return outputs

    def warmup_inputs(self) -> dict[str, Tensor] | None:
        warm: dict[str, Tensor] = {}
        lead = (1,) if self.config.batching else ()
        for spec in self.inputs:
            if spec.datatype in ("BYTES", "BF16"):
                return None
            shape = lead + tuple(1 if d < 0 else d for d in spec.shape)
            warm[spec.name] = Tensor(spec.name, spec.datatype, _zeros(shape, spec.datatype))
        return warm

    def sleep(self, level: SleepLevel) -> None:
        self.weights.sleep(level)

    def wake(self) -> None:
        self.weights.wake()

    def device_bytes(self) -> int:
        return self.weights.device_bytes()

    def unload(self) -> None:
        self.weights.unload()


def _zeros(shape: tuple[int, ...], datatype: str) -> Any:
    import numpy as np

    return np.zeros(shape, dtype=NUMPY_DTYPES[datatype])
