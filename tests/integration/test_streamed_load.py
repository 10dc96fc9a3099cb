"""Tensors made while a model streams from S3 reach its handler's load and become its weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from runtime.config import load_model_configs
from runtime.handlers.torch_module import TorchModuleHandler
from runtime.sources import WeightSources
from tests.conftest import MLP_CONFIG, ROOT
from weight_cache.push import push_directory
from weight_cache.s3 import S3Store


async def test_the_module_adopts_the_tensors_the_stream_made(bucket: str, tmp_path: Path) -> None:
    async with S3Store(bucket, "mlp") as store:
        await push_directory(store, ROOT / "examples/mlp/weights")
    (config,) = load_model_configs(MLP_CONFIG)
    config = config.model_copy(update={"source": f"s3://{bucket}/mlp", "device": "cpu"})
    sources = WeightSources(cache_dir=tmp_path / "tier")
    local = await sources.localize(config)
    try:
        tensors = local.take_tensors()
        assert tensors is not None and set(tensors) == {"model.safetensors"}
        streamed = dict(tensors["model.safetensors"])
        handler = TorchModuleHandler(local.config)
        handler.load(tensors=tensors)
        del tensors
        assert handler.module is not None
        own = handler.module.state_dict()
        file = load_file(str(ROOT / "examples/mlp/weights/model.safetensors"))
        assert own.keys() == streamed.keys() == file.keys()
        for name, value in streamed.items():
            assert own[name].data_ptr() == value.data_ptr()  # the stream's tensor, not a re-read
            assert torch.equal(own[name], file[name])
        handler.unload()
    finally:
        local.release()
        await sources.aclose()
