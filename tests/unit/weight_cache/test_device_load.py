"""The staged path (a ring of host buffers, one pass) on the CPU, where a GPU is absent: the
local tier -> device load, pinned memory that cannot be had, a device that runs out of memory."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import make_model_dir
from weight_cache.device_load import load_to_device
from weight_cache.errors import DeviceMemoryFull
from weight_cache.fetch import fetch_to_tier
from weight_cache.local import FileRangeReader, LocalStore
from weight_cache.materialize import TensorSink
from weight_cache.push import push_directory
from weight_cache.tier import LocalTier


def checkpoint(path: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tensors = {f"layer.{i}": torch.randn(300 + i, 61, generator=g) for i in range(12)}
    tensors["half"] = torch.randn(999, generator=g).half()
    tensors["odd"] = torch.arange(7, dtype=torch.int8)  # leaves later tensors unaligned
    tensors["after"] = torch.randn(5, generator=g, dtype=torch.float64)
    tensors["empty"] = torch.empty(0, 3)
    save_file(tensors, str(path))
    return tensors


@pytest.mark.parametrize(("range_bytes", "concurrency"), [(4096, 3), (1 << 20, 8)])
def test_a_local_file_loads_through_the_ring(
    tmp_path: Path, range_bytes: int, concurrency: int
) -> None:
    expected = checkpoint(tmp_path / "m.safetensors")
    got = load_to_device(
        tmp_path / "m.safetensors", "cpu", range_bytes=range_bytes, concurrency=concurrency
    )
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def test_pinned_memory_that_cannot_be_had_falls_back_to_pageable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = checkpoint(tmp_path / "m.safetensors")
    if torch.cuda.is_available():  # pinned memory exists there: make it fail
        monkeypatch.setattr(TensorSink, "_pinned", _refuse)
    with caplog.at_level(logging.WARNING, "ember.weight_cache"):
        got = load_to_device(tmp_path / "m.safetensors", "cpu", pin=True, range_bytes=8192)
    assert "pinned host memory unavailable" in caplog.text
    assert all(torch.equal(got[n], t) for n, t in expected.items())


def _refuse(self: TensorSink, length: int) -> torch.Tensor:
    raise RuntimeError("no pinned memory")


async def test_a_device_out_of_memory_mid_stream_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_model_dir(tmp_path / "src", mb=1)
    save_file({"second": torch.randn(1000)}, str(src / "extra.safetensors"))
    store = LocalStore(tmp_path / "bucket")
    await push_directory(store, src, chunk_bytes=64 * 1024)
    allocated: list[int] = []

    def allocate(self: TensorSink, nbytes: int) -> torch.Tensor:
        if allocated:  # the second file finds the device full
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 KiB")
        allocated.append(nbytes)
        return torch.empty(nbytes, dtype=torch.uint8)

    monkeypatch.setattr(TensorSink, "_allocate", allocate)
    sink = TensorSink("cpu", stage=True)
    tier = LocalTier(tmp_path / "tier")
    with pytest.raises(DeviceMemoryFull, match=r"no room for (extra|model)\.safetensors"):
        await fetch_to_tier(store, tier, sink=sink)
    sink.close()
    assert allocated and sink.staging is not None and sink._ring == []  # staging freed
    assert tier.entries() == [] and not list(tier.root.rglob("*.safetensors*"))


async def test_staged_fetch_writes_the_tier_from_the_ring(tmp_path: Path) -> None:
    """One pass: the tier file and the tensors both come from the slots."""
    src = make_model_dir(tmp_path / "src", mb=2)
    store = LocalStore(tmp_path / "bucket")
    await push_directory(store, src, chunk_bytes=64 * 1024)
    sink = TensorSink("cpu", stage=True)
    report = await fetch_to_tier(store, LocalTier(tmp_path / "tier"), sink=sink, concurrency=4)
    sink.close()
    data = (src / "model.safetensors").read_bytes()
    assert (report.path / "model.safetensors").read_bytes() == data
    header = 8 + int.from_bytes(data[:8], "little")
    assert sink.staged_bytes == len(data) - header  # every data byte copied once, no more


async def test_a_slot_regrown_for_a_file_beside_it_still_copies_what_was_read(
    tmp_path: Path,
) -> None:
    """Two small files fetched side by side: the second, larger one grows the ring's slots while
    the first still reads into the slot it was lent. Its copy must come from that buffer."""
    src = tmp_path / "src"
    src.mkdir()
    small = {"x": torch.arange(1400, dtype=torch.float32)}  # ~5.7 KB
    large = {"y": torch.arange(5000, dtype=torch.float32) * -1}  # ~20 KB
    save_file(small, str(src / "a.safetensors"))
    save_file(large, str(src / "b.safetensors"))
    store = LocalStore(tmp_path / "bucket")
    await push_directory(store, src, chunk_bytes=1 << 20)  # one chunk each: both "small" files
    loop = asyncio.get_running_loop()
    a_reading = asyncio.Event()
    b_reading = threading.Event()
    original = store.range_reader

    async def ordered(key: str, *, etag: str | None) -> FileRangeReader:
        if key == "b.safetensors":
            await a_reading.wait()  # b's ring reservation comes while a holds its slot
        reader = await original(key, etag=etag)
        read_into = reader.read_into

        def read(start: int, buffer: memoryview) -> None:
            if key == "a.safetensors":
                loop.call_soon_threadsafe(a_reading.set)
                assert b_reading.wait(10), "b never started reading"
            elif key == "b.safetensors":
                b_reading.set()
            read_into(start, buffer)

        reader.read_into = read  # type: ignore[method-assign]
        return reader

    store.range_reader = ordered  # type: ignore[method-assign]
    sink = TensorSink("cpu", stage=True, staging_bytes=4096, ring=2)
    await fetch_to_tier(store, LocalTier(tmp_path / "tier"), sink=sink)
    sink.close()
    assert torch.equal(sink.tensors["a.safetensors"]["x"], small["x"])
    assert torch.equal(sink.tensors["b.safetensors"]["y"], large["y"])
