"""Tensors made while a file downloads: CPU views of the tier file, and the staged (GPU) path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from weight_cache.errors import ObjectChanged
from weight_cache.fetch import fetch_to_tier
from weight_cache.local import LocalStore
from weight_cache.manifest import FileEntry
from weight_cache.materialize import TensorSink
from weight_cache.push import push_directory
from weight_cache.tier import LocalTier


def mixed_checkpoint(root: Path) -> dict[str, torch.Tensor]:
    """Every dtype family, an empty tensor and tensors spanning many ranges."""
    root.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    tensors = {
        "big.f32": torch.randn(300_000, generator=g),
        "bf16": torch.randn(64, 33, generator=g).to(torch.bfloat16),
        "f16": torch.randn(5, 7, generator=g).to(torch.float16),
        "i64": torch.arange(-50, 50, dtype=torch.int64).view(10, 10),
        "u8": torch.arange(255, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f8": torch.randn(16, generator=g).to(torch.float8_e4m3fn),
        "empty": torch.empty(0, 4),
        "tail.f64": torch.randn(40_000, generator=g, dtype=torch.float64),
    }
    save_file(tensors, str(root / "model.safetensors"))
    (root / "config.json").write_text("{}")
    return tensors


class Recording(TensorSink):
    """Notes how many tensors existed each time bytes arrived, and how many bytes were left."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.seen: list[tuple[int, int]] = []

    def arrived(self, entry: FileEntry, upto: int) -> None:
        super().arrived(entry, upto)
        state = self._files.get(entry.path)
        if state is not None:
            self.seen.append((len(state.tensors), entry.size - upto))


@pytest.mark.parametrize("stage", [False, True], ids=["cpu-views", "staged-ring"])
async def test_tensors_are_made_while_the_file_arrives(tmp_path: Path, stage: bool) -> None:
    expected = mixed_checkpoint(tmp_path / "src")
    store = LocalStore(tmp_path / "bucket")
    await push_directory(store, tmp_path / "src", chunk_bytes=4096)
    # a five-slot ring of 4 KiB buffers reused ~300 times: any tensor aliasing one would be wrong
    sink = Recording("cpu", stage=stage, staging_bytes=4096, ring=2)
    report = await fetch_to_tier(store, LocalTier(tmp_path / "tier"), concurrency=3, sink=sink)
    sink.close()
    got = sink.tensors["model.safetensors"]
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name].view(torch.uint8), tensor.view(torch.uint8)), name
    size = (report.path / "model.safetensors").stat().st_size
    # the first tensors existed while most of the file was still to come
    assert any(made > 0 and left > size // 2 for made, left in sink.seen)
    assert torch.equal(got["big.f32"], load_file(str(report.path / "model.safetensors"))["big.f32"])
    if stage:
        header = int.from_bytes((report.path / "model.safetensors").read_bytes()[:8], "little")
        assert sink.staged_bytes == size - 8 - header  # the data section, each byte once
    else:  # views of the tier file: the bytes were never copied
        assert sink.staged_bytes == 0
        assert not got["big.f32"].untyped_storage().resizable()


async def test_cpu_views_survive_the_rename_and_are_private(tmp_path: Path) -> None:
    mixed_checkpoint(tmp_path / "src")
    store = LocalStore(tmp_path / "bucket")
    await push_directory(store, tmp_path / "src")
    sink = TensorSink("cpu")
    report = await fetch_to_tier(store, LocalTier(tmp_path / "tier"), sink=sink)
    tensor = sink.tensors["model.safetensors"]["i64"]
    tensor += 1  # a model may write to its weights: the tier file keeps its bytes
    on_disk = load_file(str(report.path / "model.safetensors"))["i64"]
    assert torch.equal(on_disk, torch.arange(-50, 50, dtype=torch.int64).view(10, 10))
    assert torch.equal(tensor, on_disk + 1)


async def test_a_failed_fetch_hands_out_nothing(tmp_path: Path) -> None:
    mixed_checkpoint(tmp_path / "src")
    store = LocalStore(tmp_path / "bucket")
    await push_directory(store, tmp_path / "src")
    manifest_path = tmp_path / "bucket" / "model.safetensors"
    manifest_path.write_bytes(manifest_path.read_bytes())  # replaced: a new ETag
    sink = TensorSink("cpu", stage=True, staging_bytes=4096, ring=2)
    with pytest.raises(ObjectChanged):
        await fetch_to_tier(store, LocalTier(tmp_path / "tier"), sink=sink)
    sink.close()
    assert sink.tensors == {}
