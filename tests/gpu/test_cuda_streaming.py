"""Streaming onto a CUDA device: pinned staging, side-stream copies (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.unit.weight_cache.test_materialize import mixed_checkpoint
from weight_cache.device_load import load_to_device
from weight_cache.fetch import fetch_to_tier
from weight_cache.materialize import TensorSink
from weight_cache.push import push_directory
from weight_cache.stores import LocalStore
from weight_cache.tier import LocalTier


async def test_tensors_land_on_the_device_through_a_small_pinned_ring(tmp_path: Path) -> None:
    mixed_checkpoint(tmp_path / "src")
    store = LocalStore(tmp_path / "bucket")
    await push_directory(store, tmp_path / "src", chunk_bytes=4096)
    sink = TensorSink("cuda", staging_bytes=4096, ring=2)
    assert sink.stage and all(buf.is_pinned() for buf in sink._ring)
    report = await fetch_to_tier(store, LocalTier(tmp_path / "tier"), concurrency=3, sink=sink)
    sink.close()
    expected = load_file(str(report.path / "model.safetensors"))
    got = sink.tensors["model.safetensors"]
    for name, tensor in expected.items():
        assert got[name].device.type == "cuda", name
        assert torch.equal(got[name].cpu().view(torch.uint8), tensor.view(torch.uint8)), name


def test_a_tier_file_goes_to_the_device_through_pinned_reads(tmp_path: Path) -> None:
    mixed_checkpoint(tmp_path / "src")
    path = tmp_path / "src" / "model.safetensors"
    got = load_to_device(path, "cuda", range_bytes=4096, concurrency=4)
    for name, tensor in load_file(str(path)).items():
        assert got[name].device.type == "cuda", name
        assert torch.equal(got[name].cpu().view(torch.uint8), tensor.view(torch.uint8)), name
