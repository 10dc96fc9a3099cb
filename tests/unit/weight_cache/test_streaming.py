"""The file's own safetensors header is compared with the manifest's tensor index (dtype, shape,
offsets, where the data starts) as soon as it arrives, before any streamed tensor is made: a
manifest edited to say otherwise is refused and serves nothing, on the CPU and the staged path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from weight_cache.errors import CorruptCheckpoint
from weight_cache.fetch import fetch_to_tier
from weight_cache.local import LocalStore
from weight_cache.manifest import MANIFEST_NAME, FileEntry
from weight_cache.materialize import TensorSink
from weight_cache.push import push_directory
from weight_cache.safetensors_format import TensorInfo
from weight_cache.tier import LocalTier

Edit = Callable[[dict[str, Any]], None]


class Watching(TensorSink):
    """The real sink, noting every tensor it makes and every announcement it hears."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.made: list[str] = []
        self.heard: list[int] = []

    def arrived(self, entry: FileEntry, upto: int) -> None:
        if entry.safetensors is not None:
            self.heard.append(upto)
        super().arrived(entry, upto)

    def _tensor(self, state: Any, info: TensorInfo) -> torch.Tensor:
        self.made.append(info.name)
        return super()._tensor(state, info)


async def pushed(tmp_path: Path) -> LocalStore:
    src = tmp_path / "src"
    src.mkdir()
    g = torch.Generator().manual_seed(3)
    save_file(
        {"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)},
        str(src / "model.safetensors"),
    )
    (src / "config.json").write_text("{}")
    store = LocalStore(tmp_path / "bucket")
    await push_directory(store, src, chunk_bytes=4096)
    return store


def edit_index(store: LocalStore, change: Edit) -> None:
    path = store.root / MANIFEST_NAME
    raw = json.loads(path.read_bytes())
    entry = next(f for f in raw["files"] if f["path"] == "model.safetensors")
    change(entry["safetensors"])
    path.write_text(json.dumps(raw))


def dtype(st: dict[str, Any]) -> None:
    st["tensors"]["w"]["dtype"] = "I32"  # same size: offsets and digests still agree


def shape(st: dict[str, Any]) -> None:
    st["tensors"]["w"]["shape"] = [4096]


def swapped(st: dict[str, Any]) -> None:
    st["tensors"]["w"]["shape"], st["tensors"]["b"]["shape"] = [64], [64, 64]
    w, b = st["tensors"]["w"]["offsets"], st["tensors"]["b"]["offsets"]
    st["tensors"]["w"]["offsets"], st["tensors"]["b"]["offsets"] = b, w


def metadata(st: dict[str, Any]) -> None:
    st["metadata"] = {"format": "np"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dtype, "tensor 'w' has dtype F32 in the file's header, I32 in the manifest"),
        (shape, r"tensor 'w' has shape \[64, 64\] in the file's header, \[4096\]"),
        (swapped, "tensor 'b' has shape"),
        (metadata, "metadata differs"),
    ],
    ids=["dtype", "shape", "swapped", "metadata"],
)
@pytest.mark.parametrize("stage", [False, True], ids=["cpu-views", "staged-ring"])
async def test_an_index_the_header_contradicts_serves_nothing(
    tmp_path: Path, change: Edit, message: str, stage: bool
) -> None:
    store = await pushed(tmp_path)
    edit_index(store, change)
    tier = LocalTier(tmp_path / "tier")
    sink = Watching("cpu", stage=stage, staging_bytes=4096, ring=2)
    with pytest.raises(CorruptCheckpoint, match=message) as info:
        await fetch_to_tier(store, tier, concurrency=2, sink=sink)
    sink.close()
    assert "\n" not in str(info.value)
    assert sink.made == [] and sink.tensors == {}  # not one tensor was made from the lie
    assert sink.heard == []  # the header is checked before the sink hears of any byte
    assert tier.entries() == [] and not list(tier.root.rglob("*.partial"))


async def test_the_header_is_checked_before_the_rest_arrives(tmp_path: Path) -> None:
    """The check runs when the prefix covers the header, not when the whole file is in."""
    store = await pushed(tmp_path)
    edit_index(store, dtype)
    reads: list[int] = []
    original = store.range_reader

    async def counting(key: str, *, etag: str | None) -> Any:
        reader = await original(key, etag=etag)
        if key == "model.safetensors":
            read_into = reader.read_into

            def read(start: int, buffer: memoryview) -> None:
                reads.append(start)
                read_into(start, buffer)

            reader.read_into = read  # type: ignore[method-assign]
        return reader

    store.range_reader = counting  # type: ignore[method-assign]
    with pytest.raises(CorruptCheckpoint, match="dtype"):
        await fetch_to_tier(store, LocalTier(tmp_path / "tier"), concurrency=1)
    size = (store.root / "model.safetensors").stat().st_size
    assert len(reads) < size // 4096  # stopped well before the end of the file


async def test_an_honest_index_streams_as_before(tmp_path: Path) -> None:
    store = await pushed(tmp_path)
    sink = Watching("cpu", stage=True, staging_bytes=4096, ring=2)
    await fetch_to_tier(store, LocalTier(tmp_path / "tier"), concurrency=2, sink=sink)
    sink.close()
    assert sorted(sink.made) == ["b", "w"]
    assert sink.tensors["model.safetensors"]["w"].dtype == torch.float32
