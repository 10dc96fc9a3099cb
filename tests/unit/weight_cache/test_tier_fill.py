"""``LocalTier.filling`` owns an entry's hit / fill / share protocol: a complete entry is a hit, a
missing one is filled by one process and published when the block ends, a second filler waits and
shares that fill, and a fill that fails leaves nothing published."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from weight_cache.errors import CorruptCheckpoint
from weight_cache.manifest import FileEntry, Manifest
from weight_cache.tier import EntryLock, LocalTier, entry_key

DATA = b"weights"
SOURCE = "s3://bucket/model"


def manifest() -> Manifest:
    entry = FileEntry(
        path="model.bin", size=len(DATA), etag="e", sha256=hashlib.sha256(DATA).hexdigest()
    )
    return Manifest(files=[entry])


class WatchedTier(LocalTier):
    """A tier that says when a process asks for an entry's exclusive lock (to fill it)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.asked = asyncio.Event()

    async def lock(self, key: str, *, shared: bool = False, poll_s: float = 0.01) -> EntryLock:
        if not shared:
            self.asked.set()
        return await super().lock(key, shared=shared, poll_s=poll_s)


async def test_a_missing_entry_is_filled_and_published_when_the_block_ends(
    tmp_path: Path,
) -> None:
    tier, m = LocalTier(tmp_path), manifest()
    async with tier.filling(m, source=SOURCE) as fill:
        assert not fill.hit and fill.key == entry_key(m)
        assert tier.lookup(fill.key) is None  # not before the block ends
        (fill.path / "model.bin").write_bytes(DATA)
    assert tier.lookup(fill.key) == fill.path
    assert [(e.key, e.source) for e in tier.entries()] == [(fill.key, SOURCE)]


async def test_a_complete_entry_is_a_hit_and_nothing_is_written(tmp_path: Path) -> None:
    tier, m = LocalTier(tmp_path), manifest()
    async with tier.filling(m, source=SOURCE) as first:
        (first.path / "model.bin").write_bytes(DATA)
    async with tier.filling(m, source="elsewhere") as again:
        assert again.hit and again.path == first.path and again.hold is None
    assert [e.source for e in tier.entries()] == [SOURCE]  # the hit did not commit again


async def test_two_concurrent_fillers_share_one_fill(tmp_path: Path) -> None:
    tier, m = WatchedTier(tmp_path), manifest()
    fills: list[Path] = []
    filling = asyncio.Event()
    go_on = asyncio.Event()

    async def one(wait: bool) -> bool:
        async with tier.filling(m, source=SOURCE) as fill:
            if not fill.hit:
                fills.append(fill.path)
                filling.set()
                if wait:
                    await go_on.wait()
                (fill.path / "model.bin").write_bytes(DATA)
            return fill.hit

    first = asyncio.create_task(one(wait=True))
    await filling.wait()  # the first holds the lock, mid-fill
    tier.asked.clear()
    second = asyncio.create_task(one(wait=False))
    await tier.asked.wait()  # the second waits for that lock
    assert not second.done()
    go_on.set()
    assert await asyncio.gather(first, second) == [False, True]
    assert len(fills) == 1 and tier.lookup(entry_key(m)) == fills[0]


class Boom(Exception):
    """What the fill's block raises."""


async def test_a_failed_fill_leaves_nothing_published_and_the_lock_free(tmp_path: Path) -> None:
    tier, m = LocalTier(tmp_path), manifest()
    with pytest.raises(Boom):
        async with tier.filling(m, source=SOURCE) as fill:
            (fill.path / "model.bin").write_bytes(DATA)
            raise Boom
    assert tier.lookup(fill.key) is None and not fill.path.exists() and tier.entries() == []
    async with tier.filling(m, source=SOURCE) as retry:  # the lock was let go
        assert not retry.hit
        (retry.path / "model.bin").write_bytes(DATA)
    assert tier.lookup(retry.key) is not None


async def test_a_check_failing_before_the_commit_discards_the_fill(tmp_path: Path) -> None:
    tier, m = LocalTier(tmp_path), manifest()

    def refuse() -> None:
        raise CorruptCheckpoint("model.bin: sha256 differs")

    with pytest.raises(CorruptCheckpoint, match="sha256 differs"):
        async with tier.filling(m, source=SOURCE) as fill:
            (fill.path / "model.bin").write_bytes(DATA)
            fill.before_commit(refuse)
    assert tier.lookup(fill.key) is None and not fill.path.exists()


async def test_a_file_missing_at_the_commit_publishes_nothing(tmp_path: Path) -> None:
    tier, m = LocalTier(tmp_path), manifest()
    with pytest.raises(CorruptCheckpoint, match="missing or of the wrong size"):
        async with tier.filling(m, source=SOURCE) as fill:
            pass  # nothing written
    assert tier.entries() == [] and not fill.path.exists()


async def test_hold_keeps_the_entry_from_eviction_until_released(tmp_path: Path) -> None:
    tier, m = LocalTier(tmp_path), manifest()
    async with tier.filling(m, source=SOURCE, hold=True) as fill:
        (fill.path / "model.bin").write_bytes(DATA)
    assert fill.hold is not None and not tier.evict(fill.key)
    async with tier.filling(m, source=SOURCE, hold=True) as hit:
        assert hit.hit and hit.hold is not None
    fill.release()
    assert not tier.evict(fill.key)  # the hit's hold still keeps it
    hit.release()
    assert tier.evict(fill.key)


async def test_a_background_commit_publishes_in_its_task(tmp_path: Path) -> None:
    tier, m = LocalTier(tmp_path), manifest()
    async with tier.filling(m, source=SOURCE, commit_in_background=True) as fill:
        (fill.path / "model.bin").write_bytes(DATA)
    assert fill.committed is not None
    await fill.committed
    assert tier.lookup(fill.key) == fill.path
