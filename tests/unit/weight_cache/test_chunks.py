"""Chunk digests: verified by the thread that read the chunk, refetched or refused, never loaded;
the whole-file sha256 checked before the tier entry commits; format 1 manifests still load."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_model_dir
from weight_cache.errors import CorruptCheckpoint
from weight_cache.fetch import fetch_to_tier, read_manifest
from weight_cache.local import FileRangeReader, LocalStore
from weight_cache.manifest import MANIFEST_NAME, Manifest, chunk_digest
from weight_cache.materialize import TensorSink
from weight_cache.push import push_directory
from weight_cache.tier import LocalTier, entry_key

CHUNK = 64 * 1024


async def pushed(tmp_path: Path) -> tuple[LocalStore, Manifest]:
    src = make_model_dir(tmp_path / "src", mb=1)
    store = LocalStore(tmp_path / "bucket")
    return store, await push_directory(store, src, chunk_bytes=CHUNK)


def corrupting(store: LocalStore, *, chunk: int, times: int) -> list[int]:
    """Flip one byte of ``chunk`` of model.safetensors the first ``times`` reads of it, whether
    it is read into memory or copied into the tier file in the kernel."""
    original = store.range_reader
    flipped: list[int] = []

    async def reader(key: str, *, etag: str | None) -> FileRangeReader:
        opened = await original(key, etag=etag)
        if key != "model.safetensors":
            return opened
        read_into = opened.read_into

        def read(start: int, buffer: memoryview) -> None:
            read_into(start, buffer)
            if start == chunk * CHUNK and len(flipped) < times:
                buffer[100] ^= 0xFF
                flipped.append(start)

        copy_into = opened.copy_into

        def copy(fd: int, start: int, length: int) -> None:
            copy_into(fd, start, length)
            if start == chunk * CHUNK and len(flipped) < times:
                byte = os.pread(fd, 1, start + 100)[0]
                os.pwrite(fd, bytes([byte ^ 0xFF]), start + 100)
                flipped.append(start)

        opened.read_into = read  # type: ignore[method-assign]
        opened.copy_into = copy  # type: ignore[method-assign]
        return opened

    store.range_reader = reader  # type: ignore[method-assign]
    return flipped


def rewrite_manifest(store_dir: Path, change: object) -> None:
    path = store_dir / MANIFEST_NAME
    raw = json.loads(path.read_bytes())
    change(raw)  # type: ignore[operator]
    path.write_text(json.dumps(raw))


async def test_push_records_a_chunk_table_that_tiles_each_file(tmp_path: Path) -> None:
    _, manifest = await pushed(tmp_path)
    assert manifest.format == 2
    for f in manifest.files:
        assert f.chunks is not None and f.chunks.size == CHUNK and f.chunks.tiles(f.size)
    weights = manifest.file("model.safetensors")
    assert weights.chunks is not None and len(weights.chunks.digests) > 10
    data = (tmp_path / "src" / "model.safetensors").read_bytes()
    assert weights.chunks.digests[1] == chunk_digest(data[CHUNK : 2 * CHUNK])


async def test_a_chunk_read_wrong_once_is_read_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, _ = await pushed(tmp_path)
    flipped = corrupting(store, chunk=3, times=1)
    sink = TensorSink("cpu")
    with caplog.at_level(logging.WARNING, "ember.weight_cache"):
        report = await fetch_to_tier(store, LocalTier(tmp_path / "tier"), sink=sink)
    assert flipped == [3 * CHUNK]
    assert "chunk 3 failed its digest; reading it again" in caplog.text
    src = (tmp_path / "src" / "model.safetensors").read_bytes()
    assert (report.path / "model.safetensors").read_bytes() == src
    expected = load_file(str(tmp_path / "src" / "model.safetensors"))
    for name, tensor in sink.tensors["model.safetensors"].items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize("stage", [False, True], ids=["cpu-views", "staged"])
async def test_a_chunk_wrong_every_time_is_refused_and_nothing_is_loaded(
    tmp_path: Path, stage: bool
) -> None:
    store, manifest = await pushed(tmp_path)
    corrupting(store, chunk=2, times=2)
    sink = TensorSink("cpu", stage=stage)
    tier = LocalTier(tmp_path / "tier")
    with pytest.raises(CorruptCheckpoint, match=r"model.safetensors: chunk 2 .* read twice"):
        await fetch_to_tier(store, tier, sink=sink)
    sink.close()
    assert "model.safetensors" not in sink.tensors  # no tensor from it reached anyone
    assert tier.lookup(entry_key(manifest)) is None and tier.entries() == []
    assert not list(tier.root.rglob("*.safetensors*"))


async def test_a_manifest_without_chunk_digests_still_loads(tmp_path: Path) -> None:
    store, _ = await pushed(tmp_path)

    def format_1(raw: dict) -> None:  # type: ignore[type-arg]
        raw["format"] = 1
        for f in raw["files"]:
            del f["chunks"]

    rewrite_manifest(tmp_path / "bucket", format_1)
    old = await read_manifest(store)
    assert old.format == 1 and all(f.chunks is None for f in old.files)
    sink = TensorSink("cpu", stage=True)
    report = await fetch_to_tier(store, LocalTier(tmp_path / "tier"), chunk_bytes=CHUNK, sink=sink)
    sink.close()
    src = (tmp_path / "src" / "model.safetensors").read_bytes()
    assert (report.path / "model.safetensors").read_bytes() == src
    assert set(sink.tensors["model.safetensors"]) == {"a", "b", "c"}


async def test_a_format_1_file_that_differs_is_refused_by_its_whole_digest(
    tmp_path: Path,
) -> None:
    store, _ = await pushed(tmp_path)

    def format_1_bad(raw: dict) -> None:  # type: ignore[type-arg]
        raw["format"] = 1
        for f in raw["files"]:
            del f["chunks"]
            if f["path"] == "model.safetensors":
                f["sha256"] = "1" * 64

    rewrite_manifest(tmp_path / "bucket", format_1_bad)
    tier = LocalTier(tmp_path / "tier")
    with pytest.raises(CorruptCheckpoint, match=r"sha256 .* does not match the manifest"):
        await fetch_to_tier(store, tier, chunk_bytes=CHUNK)
    assert tier.entries() == []


async def test_a_chunk_table_that_does_not_tile_the_file_is_refused(tmp_path: Path) -> None:
    store, _ = await pushed(tmp_path)

    def drop_one(raw: dict) -> None:  # type: ignore[type-arg]
        for f in raw["files"]:
            if f["path"] == "model.safetensors":
                f["chunks"]["digests"].pop()

    rewrite_manifest(tmp_path / "bucket", drop_one)
    with pytest.raises(CorruptCheckpoint, match=r"chunk table of model\.safetensors does not tile"):
        await read_manifest(store)


async def test_whole_file_digest_is_checked_before_the_entry_commits(tmp_path: Path) -> None:
    """Chunks that match their digests but a whole-file sha256 that does not (a manifest at odds
    with itself): the tensors were made, the tier entry is never marked good."""
    store, _ = await pushed(tmp_path)

    def wrong_sha(raw: dict) -> None:  # type: ignore[type-arg]
        for f in raw["files"]:
            if f["path"] == "model.safetensors":
                f["sha256"] = "2" * 64

    rewrite_manifest(tmp_path / "bucket", wrong_sha)
    tier = LocalTier(tmp_path / "tier")
    sink = TensorSink("cpu")
    report = await fetch_to_tier(store, tier, sink=sink, commit_in_background=True)
    assert set(sink.tensors["model.safetensors"]) == {"a", "b", "c"}
    assert report.committed is not None
    with pytest.raises(CorruptCheckpoint, match=r"sha256 .* does not match the manifest"):
        await report.committed
    assert tier.entries() == [] and tier.lookup(entry_key(await read_manifest(store))) is None
