"""The handlers on a CUDA device give what they give on the CPU (skipped without a GPU)."""

from __future__ import annotations

import numpy as np

from runtime.config import load_model_configs
from runtime.handlers.base import create_handler
from runtime.tensors import Tensor
from tests.conftest import MINILM_CONFIG, MLP_CONFIG


def _on(config_path: object, device: str) -> object:
    (config,) = load_model_configs(config_path)  # type: ignore[arg-type]
    handler = create_handler(config.model_copy(update={"device": device}))
    handler.load()
    return handler


def test_mlp_on_cuda_matches_cpu() -> None:
    x = np.random.default_rng(0).random((32, 784), dtype=np.float32)
    inputs = {"input": Tensor("input", "FP32", x)}
    cpu = _on(MLP_CONFIG, "cpu").predict(inputs)["logits"].array  # type: ignore[attr-defined]
    gpu = _on(MLP_CONFIG, "cuda").predict(inputs)["logits"].array  # type: ignore[attr-defined]
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)


def test_minilm_on_cuda_matches_cpu() -> None:
    text = np.array([b"scale to zero", b"cold starts hurt"], dtype=object)
    inputs = {"text": Tensor("text", "BYTES", text)}
    cpu = _on(MINILM_CONFIG, "cpu").predict(inputs)["embedding"].array  # type: ignore[attr-defined]
    gpu = _on(MINILM_CONFIG, "cuda").predict(inputs)["embedding"].array  # type: ignore[attr-defined]
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
