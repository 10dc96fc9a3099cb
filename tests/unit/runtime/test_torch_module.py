"""The torch-module handler: weights from the file or from the stream, strict or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file, save_model

from runtime.config import ModelConfig
from runtime.handlers.base import HandlerLoadError
from runtime.handlers.torch_module import TorchModuleHandler
from runtime.tensors import Tensor
from tests.fixtures import meta_modules as fx


def handler(source: Path, module: str = "Net", **options: Any) -> TorchModuleHandler:
    config = ModelConfig(
        name="m",
        handler="torch-module",
        source=str(source),
        device="cpu",
        options={"module": f"tests.fixtures.meta_modules:{module}", **options},
        inputs=[{"name": "x", "datatype": "FP32", "shape": [8]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [3]}],
    )
    return TorchModuleHandler(config)


def weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in fx.Net().state_dict().items()}


def test_streamed_tensors_are_what_the_module_holds(tmp_path: Path) -> None:
    save_file(weights(0), str(tmp_path / "model.safetensors"))
    streamed = weights(1)
    h = handler(tmp_path)
    h.load(tensors={"model.safetensors": streamed})
    assert h.module is not None
    for name, value in streamed.items():  # adopted as they came, not read from the file
        assert h.module.state_dict()[name].data_ptr() == value.data_ptr()
    x = np.ones((2, 8), dtype=np.float32)
    y = h.predict({"x": Tensor("x", "FP32", x)})["y"].array
    expected = torch.relu(
        torch.nn.functional.layer_norm(
            torch.from_numpy(x) @ streamed["fc1.weight"].T + streamed["fc1.bias"],
            (8,),
            streamed["norm.weight"],
            streamed["norm.bias"],
        )
    )
    np.testing.assert_allclose(
        y, (expected @ streamed["fc2.weight"].T + streamed["fc2.bias"]).numpy(), rtol=1e-5
    )


def test_other_files_streamed_tensors_are_not_taken(tmp_path: Path) -> None:
    file = weights(0)
    save_file(file, str(tmp_path / "model.safetensors"))
    h = handler(tmp_path)
    h.load(tensors={"other.safetensors": weights(1)})
    assert h.module is not None
    assert torch.equal(h.module.fc1.weight, file["fc1.weight"])


def test_strict_wants_every_parameter_and_without_it_the_module_initialises_them(
    tmp_path: Path,
) -> None:
    file = weights(0)
    del file["fc2.bias"]
    save_file(file, str(tmp_path / "model.safetensors"))
    with pytest.raises(HandlerLoadError, match=r"weights lack parameters: \['fc2.bias'\]"):
        handler(tmp_path).load()
    lenient = handler(tmp_path, strict=False)
    lenient.load()
    assert lenient.module is not None
    bias = lenient.module.fc2.bias
    assert 0 < bias.abs().max() <= 1 / 8**0.5  # nn.Linear's own init
    assert torch.equal(lenient.module.fc2.weight, file["fc2.weight"])


def test_a_tied_module_loads_from_a_file_that_holds_the_tensor_once(tmp_path: Path) -> None:
    source = fx.Tied()
    save_model(source, str(tmp_path / "model.safetensors"))  # keeps one name of the two
    h = handler(tmp_path, "Tied")
    h.load()
    assert h.module is not None
    assert h.module.head.weight is h.module.emb.weight
    assert torch.equal(h.module.emb.weight, source.emb.weight)
