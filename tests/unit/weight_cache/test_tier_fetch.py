"""Push, the local tier and the streaming fetch, against a directory store (no network)."""

from __future__ import annotations

import asyncio
import errno
import filecmp
import itertools
import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import make_model_dir
from weight_cache.errors import CorruptCheckpoint, DiskFull, ObjectChanged, ObjectMissing
from weight_cache.fetch import fetch_to_tier, read_manifest
from weight_cache.local import FileRangeReader, LocalStore
from weight_cache.manifest import MANIFEST_NAME, Manifest
from weight_cache.push import push_directory
from weight_cache.tier import COMPLETE, LocalTier, entry_key


async def pushed(
    tmp_path: Path, name: str = "m", *, chunk_bytes: int = 64 * 1024, **kw: float
) -> tuple[LocalStore, Path, Manifest]:
    """A pushed model whose chunk table (and so whose fetch) cuts it into many ranges."""
    src = make_model_dir(tmp_path / f"src-{name}", **kw)  # type: ignore[arg-type]
    store = LocalStore(tmp_path / "bucket" / name)
    manifest = await push_directory(store, src, chunk_bytes=chunk_bytes)
    return store, src, manifest


def no_partials(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".partial")]


async def test_push_writes_files_and_a_manifest_last(tmp_path: Path) -> None:
    store, _src, manifest = await pushed(tmp_path)
    assert sorted(f.path for f in manifest.files) == [
        "config.json",
        "model.safetensors",
        "sub/vocab.txt",
    ]
    st = manifest.file("model.safetensors").safetensors
    assert st is not None and set(st.tensors) == {"a", "b", "c"}
    assert (await read_manifest(store)).identity() == manifest.identity()


async def test_fetch_streams_verifies_and_then_hits(tmp_path: Path) -> None:
    store, src, manifest = await pushed(tmp_path, mb=3)
    tier = LocalTier(tmp_path / "tier")
    seen: list[int] = []
    report = await fetch_to_tier(
        store, tier, concurrency=3, chunk_bytes=256 * 1024, progress=seen.append
    )
    assert not report.hit and report.bytes_fetched == manifest.total_bytes == sum(seen)
    for f in manifest.files:
        assert filecmp.cmp(src / f.path, report.path / f.path, shallow=False)
    assert (report.path / COMPLETE).is_file() and no_partials(tier.root)
    again = await fetch_to_tier(store, tier)
    assert again.hit and again.path == report.path


async def test_a_replaced_object_fails_cleanly(tmp_path: Path) -> None:
    store, _src, manifest = await pushed(tmp_path)
    target = tmp_path / "bucket" / "m" / "model.safetensors"
    target.write_bytes(target.read_bytes()[::-1])  # replaced after the manifest was written
    tier = LocalTier(tmp_path / "tier")
    with pytest.raises(ObjectChanged):
        await fetch_to_tier(store, tier, chunk_bytes=128 * 1024)
    assert tier.entries() == [] and no_partials(tier.root)
    assert tier.lookup(entry_key(manifest)) is None


async def test_bytes_that_do_not_match_the_manifest_are_refused(tmp_path: Path) -> None:
    store, _src, _manifest = await pushed(tmp_path)
    raw = json.loads((tmp_path / "bucket" / "m" / MANIFEST_NAME).read_bytes())
    raw["files"][0]["sha256"] = "0" * 64
    (tmp_path / "bucket" / "m" / MANIFEST_NAME).write_text(json.dumps(raw))
    tier = LocalTier(tmp_path / "tier")
    with pytest.raises(CorruptCheckpoint, match="does not match the manifest"):
        await fetch_to_tier(store, tier)
    assert tier.entries() == [] and no_partials(tier.root)


async def test_missing_manifest_and_missing_object(tmp_path: Path) -> None:
    tier = LocalTier(tmp_path / "tier")
    with pytest.raises(ObjectMissing, match="ember cache push"):
        await fetch_to_tier(LocalStore(tmp_path / "nothing"), tier)
    store, _, _ = await pushed(tmp_path)
    (tmp_path / "bucket" / "m" / "config.json").unlink()
    with pytest.raises(ObjectMissing):
        await fetch_to_tier(store, tier)
    assert tier.entries() == []


async def test_a_corrupt_checkpoint_is_never_pushed(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path / "src")
    blob = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(blob[:-10])
    store = LocalStore(tmp_path / "bucket" / "m")
    with pytest.raises(CorruptCheckpoint):
        await push_directory(store, src)
    assert not (tmp_path / "bucket" / "m").exists()


async def test_shard_index_must_match_its_shards(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path / "src")
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model.safetensors", "zzz": "model.safetensors"}})
    )
    with pytest.raises(CorruptCheckpoint, match="has no tensor 'zzz'"):
        await push_directory(LocalStore(tmp_path / "b"), src)


async def test_disk_full_fails_before_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, _ = await pushed(tmp_path)
    tier = LocalTier(tmp_path / "tier")

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DiskFull, match="no space left"):
        await fetch_to_tier(store, tier)
    assert tier.entries() == [] and no_partials(tier.root)


def no_fallocate(fd: int, offset: int, length: int) -> None:
    raise OSError(errno.EOPNOTSUPP, "Operation not supported")


async def test_a_filesystem_without_fallocate_is_written_with_pwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, src, _ = await pushed(tmp_path, mb=3)
    monkeypatch.setattr(os, "posix_fallocate", no_fallocate)
    report = await fetch_to_tier(store, LocalTier(tmp_path / "tier"), chunk_bytes=256 * 1024)
    assert filecmp.cmp(src / "model.safetensors", report.path / "model.safetensors", shallow=False)


async def test_disk_full_mid_write_without_fallocate_is_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, _ = await pushed(tmp_path, mb=3)
    tier = LocalTier(tmp_path / "tier")
    monkeypatch.setattr(os, "posix_fallocate", no_fallocate)
    real_pwrite, real_copy = os.pwrite, os.copy_file_range
    written = 0

    def fill(n: int) -> None:
        nonlocal written
        if written > 1_000_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        written += n

    def filling(fd: int, data: memoryview, offset: int) -> int:
        fill(len(data))
        return real_pwrite(fd, data, offset)

    def copying(src: int, dst: int, count: int, *offsets: int) -> int:  # a directory store's
        fill(count)
        return int(real_copy(src, dst, count, *offsets))

    monkeypatch.setattr(os, "pwrite", filling)
    monkeypatch.setattr(os, "copy_file_range", copying)
    with pytest.raises(DiskFull, match="no space left"):
        await fetch_to_tier(store, tier, chunk_bytes=256 * 1024)
    assert tier.entries() == [] and no_partials(tier.root)


async def test_budget_evicts_least_recently_used(tmp_path: Path) -> None:
    stores = [await pushed(tmp_path, name, mb=1, seed=i) for i, name in enumerate("abc")]
    size = stores[0][2].total_bytes
    tier = LocalTier(tmp_path / "tier", budget_bytes=int(size * 2.5))
    first = await fetch_to_tier(stores[0][0], tier)
    await fetch_to_tier(stores[1][0], tier)
    os.utime(first.path / COMPLETE, (1, 1))  # a long time ago
    await fetch_to_tier(stores[2][0], tier)
    keys = {e.key for e in tier.entries()}
    assert entry_key(stores[0][2]) not in keys and len(keys) == 2
    with pytest.raises(DiskFull, match="budget"):
        await fetch_to_tier(stores[0][0], LocalTier(tmp_path / "tier2", budget_bytes=size // 2))


async def test_an_entry_in_use_is_not_evicted_and_stale_fills_are_cleaned(tmp_path: Path) -> None:
    store, _, manifest = await pushed(tmp_path)
    tier = LocalTier(tmp_path / "tier")
    report = await fetch_to_tier(store, tier)
    key = entry_key(manifest)
    async with tier.locked(key):
        assert not tier.evict(key)
    assert tier.evict(key) and tier.entries() == []
    crashed = tier.entry_path("deadbeef" * 4)
    crashed.mkdir()
    (crashed / "model.safetensors.partial").write_bytes(b"half")
    assert tier.clean_stale() == 1 and not crashed.exists()
    assert not report.path.exists()


async def test_concurrent_fills_of_one_model_fetch_once(tmp_path: Path) -> None:
    store, _, manifest = await pushed(tmp_path, mb=2)
    reads = 0
    original = store.range_reader

    async def counting(key: str, *, etag: str | None) -> FileRangeReader:
        reader = await original(key, etag=etag)
        read_into = reader.read_into

        copy_into = reader.copy_into

        def count(start: int, buffer: memoryview) -> None:
            nonlocal reads
            reads += len(buffer)
            read_into(start, buffer)

        def count_copy(fd: int, start: int, length: int) -> None:
            nonlocal reads
            reads += length
            copy_into(fd, start, length)

        reader.read_into = count  # type: ignore[method-assign]
        reader.copy_into = count_copy  # type: ignore[method-assign]
        return reader

    store.range_reader = counting  # type: ignore[method-assign]
    tiers = [LocalTier(tmp_path / "tier") for _ in range(3)]  # as three processes would
    reports = await asyncio.gather(*(fetch_to_tier(store, t, manifest=manifest) for t in tiers))
    assert sum(not r.hit for r in reports) == 1
    assert reads == manifest.total_bytes


def test_push_from_the_hugging_face_cache_offline(tmp_path: Path) -> None:
    """hf://org/repo[@rev] is read through huggingface_hub's own cache resolution: with
    HF_HUB_OFFLINE=1 a model in the cache pushes; one that is not says so. In a process of its
    own: huggingface_hub reads its variables when it is imported."""
    import json
    import os
    import subprocess
    import sys

    from tests.fixtures.hf_cache import COMMIT, MINILM_REPO, hf_cache, minilm_files

    cache = tmp_path / "hf" / "hub"
    hf_cache(cache, MINILM_REPO, minilm_files())
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    def push(source: str, dest: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ember", "cache", "push", source, dest],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    bucket = tmp_path / "bucket"
    done = push(f"hf://{MINILM_REPO}", f"file://{bucket}/minilm")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((bucket / "minilm" / "ember-manifest.json").read_text())
    assert manifest["source"] == f"hf://{MINILM_REPO}"
    names = {f["path"] for f in manifest["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    assert "README.md" not in names  # what a model needs of the repository, no more
    pinned = push(f"hf://{MINILM_REPO}@{COMMIT}", f"file://{bucket}/pinned")
    assert pinned.returncode == 0, pinned.stderr
    missing = push("hf://org/not-cached", f"file://{bucket}/x")
    assert missing.returncode == 1 and "not in the Hugging Face cache" in missing.stderr
    for bad in ("hf://just-a-name", "hf://org/repo@"):
        refused = push(bad, f"file://{bucket}/x")
        assert refused.returncode == 1 and "expected hf://org/repo" in refused.stderr


async def test_a_folder_with_only_a_pickle_checkpoint_is_not_pushed(tmp_path: Path) -> None:
    from weight_cache.errors import BadSource
    from weight_cache.push import push_source

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02not loaded")
    (folder / "config.json").write_text("{}")
    store = LocalStore(tmp_path / "bucket" / "pickled")
    with pytest.raises(BadSource, match=r"pytorch_model\.bin: a pickle checkpoint"):
        await push_source(store, str(folder))
    assert not list((tmp_path / "bucket").rglob("*"))  # nothing uploaded


async def test_commit_in_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files are usable at once; durability and the marker follow, holding the lock."""
    store, src, manifest = await pushed(tmp_path)
    tier = LocalTier(tmp_path / "tier")
    report = await fetch_to_tier(store, tier, commit_in_background=True)
    assert report.committed is not None
    assert filecmp.cmp(src / "config.json", report.path / "config.json", shallow=False)
    waiting = asyncio.create_task(fetch_to_tier(store, LocalTier(tier.root), manifest=manifest))
    await report.committed
    assert (report.path / COMPLETE).is_file()
    assert (await waiting).hit  # it waited for the commit instead of fetching again

    # a commit that fails leaves no entry and releases the lock
    def broken(*args: object, **kwargs: object) -> Path:
        raise OSError(errno.EIO, "I/O error")

    other = LocalTier(tmp_path / "tier2")
    monkeypatch.setattr(other, "commit", broken)
    failed = await fetch_to_tier(store, other, commit_in_background=True)
    assert failed.committed is not None
    with pytest.raises(OSError, match="I/O error"):
        await failed.committed
    assert other.entries() == [] and not failed.path.exists()
    monkeypatch.undo()
    assert not (await fetch_to_tier(store, LocalTier(other.root))).hit


async def test_held_entries_are_not_evicted(tmp_path: Path) -> None:
    """A process serving from an entry holds it shared: eviction and budgets pass it by."""
    store, _, manifest = await pushed(tmp_path)
    key = entry_key(manifest)
    tier = LocalTier(tmp_path / "tier")
    filled = await fetch_to_tier(store, tier, hold=True, commit_in_background=True)
    assert filled.committed is not None
    await filled.committed
    hit = await fetch_to_tier(store, LocalTier(tier.root), hold=True)  # a second user
    assert hit.hit and hit.hold is not None
    assert not tier.evict(key)
    filled.release()
    assert not tier.evict(key)  # the second user still holds it
    hit.release()
    assert tier.evict(key) and tier.entries() == []


async def test_a_cancelled_fetch_stops_its_threads_and_leaves_nothing(tmp_path: Path) -> None:
    store, _, manifest = await pushed(tmp_path, mb=4)
    original = store.range_reader
    reads = itertools.count(1)
    underway = asyncio.Event()  # both threads have had ranges, and some have landed
    loop = asyncio.get_running_loop()
    reads_after_cancel = 0
    cancelled = False

    async def slow(key: str, *, etag: str | None) -> FileRangeReader:
        reader = await original(key, etag=etag)
        read_into = reader.read_into

        copy_into = reader.copy_into

        def crawl() -> None:
            nonlocal reads_after_cancel
            if cancelled:
                reads_after_cancel += 1
            if next(reads) >= 4:
                loop.call_soon_threadsafe(underway.set)
            time.sleep(0.05)  # a slow store: the fetch is still going when it is cancelled

        def crawl_read(start: int, buffer: memoryview) -> None:
            crawl()
            read_into(start, buffer)

        def crawl_copy(fd: int, start: int, length: int) -> None:
            crawl()
            copy_into(fd, start, length)

        reader.read_into = crawl_read  # type: ignore[method-assign]
        reader.copy_into = crawl_copy  # type: ignore[method-assign]
        return reader

    store.range_reader = slow  # type: ignore[method-assign]
    tier = LocalTier(tmp_path / "tier")
    task = asyncio.create_task(
        fetch_to_tier(store, tier, manifest=manifest, chunk_bytes=64 * 1024, concurrency=2)
    )
    await asyncio.wait_for(underway.wait(), 30)
    cancelled = True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reads_after_cancel <= 2  # at most the ranges already in the threads' hands
    assert tier.entries() == [] and no_partials(tier.root)
    assert not any(p.is_file() for p in tier.root.rglob("*.safetensors"))
