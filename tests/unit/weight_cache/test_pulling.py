"""``pull`` is the package's one way in: a store's model into the tier (fetched once, a hit after),
its bytes to a sink as they land; a hub model through the Hugging Face cache; bad input refused
before anything is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_model_dir
from weight_cache import BadSource, LocalTier, Manifest, hub, pull
from weight_cache.local import LocalStore
from weight_cache.manifest import FileEntry
from weight_cache.push import push_directory


class Sink:
    staging = None

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.upto: dict[str, int] = {}

    def opened(self, entry: FileEntry, partial: Path) -> None:
        self.events.append(("opened", entry.path))

    def arrived(self, entry: FileEntry, upto: int) -> None:
        assert upto > self.upto.get(entry.path, 0)
        self.upto[entry.path] = upto

    def finished(self, entry: FileEntry, final: Path) -> None:
        assert final.is_file()
        self.events.append(("finished", entry.path))


async def test_a_file_store_is_pulled_into_the_tier_then_hit(tmp_path: Path) -> None:
    source = make_model_dir(tmp_path / "src", mb=0.2)
    pushed = await push_directory(LocalStore(tmp_path / "bucket" / "m"), source)
    tier = LocalTier(tmp_path / "tier")
    planned: list[Manifest] = []
    got: list[int] = []
    sink = Sink()

    report = await pull(
        f"file://{tmp_path}/bucket/m",
        tier,
        sink=sink,
        progress=got.append,
        planned=planned.append,
        chunk_bytes=64 * 1024,
    )
    assert not report.hit and report.manifest == pushed and planned == [pushed]
    assert sum(got) == pushed.total_bytes == report.bytes_fetched
    for f in pushed.files:
        assert (report.path / f.path).read_bytes() == (source / f.path).read_bytes()
        assert ("finished", f.path) in sink.events and sink.upto.get(f.path, 0) == f.size
    assert [e.source for e in tier.entries()] == [f"file://{tmp_path}/bucket/m"]

    again = await pull(str(tmp_path / "bucket" / "m"), tier)  # a plain path names it too
    assert again.hit and again.path == report.path and again.bytes_fetched == 0


async def test_pull_keeps_a_hold_until_released(tmp_path: Path) -> None:
    await push_directory(LocalStore(tmp_path / "bucket"), make_model_dir(tmp_path / "src", mb=0.1))
    tier = LocalTier(tmp_path / "tier")
    report = await pull(str(tmp_path / "bucket"), tier, hold=True, commit_in_background=True)
    assert report.committed is not None
    await report.committed
    (entry,) = tier.entries()
    assert not tier.evict(entry.key)
    report.release()
    assert tier.evict(entry.key)


async def test_an_s3_model_is_pulled_end_to_end(tmp_path: Path, bucket: str) -> None:
    from weight_cache.stores import open_store

    source = make_model_dir(tmp_path / "src", mb=0.3)
    async with open_store(f"s3://{bucket}/models/m") as store:
        pushed = await push_directory(store, source)
    tier = LocalTier(tmp_path / "tier")
    report = await pull(f"s3://{bucket}/models/m/", tier, concurrency=4)
    assert not report.hit and report.manifest == pushed
    for f in pushed.files:
        assert (report.path / f.path).read_bytes() == (source / f.path).read_bytes()
    assert [e.source for e in tier.entries()] == [f"s3://{bucket}/models/m"]
    assert (await pull(f"s3://{bucket}/models/m", tier)).hit


async def test_a_hub_model_goes_through_the_hugging_face_cache_not_the_tier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def resolve(source: str) -> Path:
        asked.append(source)
        return tmp_path / "snapshot"

    monkeypatch.setattr(hub, "resolve", resolve)
    report = await pull("hf://org/model@v1", None)
    assert asked == ["hf://org/model@v1"] and report.path == tmp_path / "snapshot"
    assert report.manifest is None and not (tmp_path / "tier").exists()


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("gs://bucket/m", "unsupported scheme 'gs'"),
        ("s3:///m", "an s3:// URI needs a bucket"),
        ("hf://org/repo@", "expected hf://org/repo"),
    ],
)
async def test_a_bad_source_is_refused_before_anything_is_touched(
    tmp_path: Path, source: str, says: str
) -> None:
    with pytest.raises(BadSource, match=says):
        await pull(source, LocalTier(tmp_path / "tier"))
    assert list((tmp_path / "tier" / "entries").iterdir()) == []


async def test_a_store_source_without_a_tier_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the local tier"):
        await pull(str(tmp_path), None)
