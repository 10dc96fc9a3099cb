"""The local tier trusts only what it verified: an entry is complete only with its marker, its
manifest copy and every listed file; the sweep removes what is not (unless someone holds it);
evict takes entry keys or model URIs and never leaves the tier; push leaves the tier's own files
out, so a pulled entry pushes as the model it holds."""

from __future__ import annotations

import fcntl
import filecmp
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_model_dir
from weight_cache.errors import BadEntryKey, BadSource, CorruptCheckpoint
from weight_cache.fetch import fetch_to_tier, read_manifest
from weight_cache.local import LocalStore
from weight_cache.manifest import MANIFEST_NAME, Manifest
from weight_cache.push import push_directory
from weight_cache.tier import COMPLETE, LocalTier, entry_key, is_entry_key


async def filled(tmp_path: Path, name: str = "m", seed: int = 0) -> tuple[LocalTier, Manifest]:
    store = LocalStore(tmp_path / "bucket" / name)
    manifest = await push_directory(
        store, make_model_dir(tmp_path / f"src-{name}", mb=0.1, seed=seed)
    )
    tier = LocalTier(tmp_path / "tier")
    await fetch_to_tier(store, tier)
    return tier, manifest


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# ------------------------------------------------------------------------- reserved names
async def test_a_manifest_naming_the_marker_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    await push_directory(store, make_model_dir(tmp_path / "src", mb=0.1))
    raw = json.loads((store.root / MANIFEST_NAME).read_bytes())
    marker = dict(raw["files"][0], path=".ember-complete")
    raw["files"].insert(0, marker)
    (store.root / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(CorruptCheckpoint, match=r"'\.ember-complete' is a name the local tier"):
        await read_manifest(store)
    tier = LocalTier(tmp_path / "tier")
    with pytest.raises(CorruptCheckpoint, match="ember-complete"):
        await fetch_to_tier(store, tier)
    assert not any((tier.root / "entries").iterdir())


async def test_a_manifest_made_in_code_is_held_to_the_same_rules(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    manifest = await push_directory(store, make_model_dir(tmp_path / "src", mb=0.1))
    lying = manifest.model_copy(
        update={"files": [*manifest.files, manifest.files[0].model_copy(update={"path": "a/.."})]}
    )
    tier = LocalTier(tmp_path / "tier")
    with pytest.raises(CorruptCheckpoint, match=r"'a/\.\.' is not a plain relative path"):
        await fetch_to_tier(store, tier, manifest=lying)
    assert not any((tier.root / "entries").iterdir())


async def test_a_pulled_entry_pushes_as_the_model_it_holds(tmp_path: Path) -> None:
    tier, manifest = await filled(tmp_path)
    entry = tier.entries()[0].path
    assert (entry / COMPLETE).is_file() and (entry / MANIFEST_NAME).is_file()
    (entry / "stray.partial").write_bytes(b"half")  # as a crashed write would leave
    copy = LocalStore(tmp_path / "copy")
    pushed = await push_directory(copy, entry)
    assert sorted(f.path for f in pushed.files) == sorted(f.path for f in manifest.files)
    assert pushed.identity() == manifest.identity()
    assert not (copy.root / COMPLETE).exists() and not (copy.root / "stray.partial").exists()
    again = await fetch_to_tier(copy, LocalTier(tmp_path / "tier2"))
    for f in manifest.files:
        assert filecmp.cmp(entry / f.path, again.path / f.path, shallow=False)


async def test_push_refuses_a_file_no_manifest_could_name(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path / "src", mb=0.1)
    (src / "a\\b").write_text("x")
    with pytest.raises(BadSource, match="backslash"):
        await push_directory(LocalStore(tmp_path / "bucket"), src)
    assert not (tmp_path / "bucket").exists()


# --------------------------------------------------------------------------- completeness
async def test_an_entry_missing_a_file_is_not_complete_and_is_swept(tmp_path: Path) -> None:
    tier, manifest = await filled(tmp_path)
    key = entry_key(manifest)
    path = tier.entry_path(key)
    (path / "sub" / "vocab.txt").unlink()
    assert tier.lookup(key) is None and tier.entries() == []
    held = await tier.lock(key, shared=True)  # someone still serves from what is left
    assert tier.clean_stale() == 0 and path.exists()
    held.release()
    assert tier.clean_stale() == 1 and not path.exists()


@pytest.mark.parametrize(
    "damage",
    ["no-manifest-copy", "another-models-manifest", "file-of-wrong-size", "marker-only"],
)
async def test_a_marker_alone_does_not_make_an_entry_complete(tmp_path: Path, damage: str) -> None:
    """As a tier filled from a manifest that named the marker would look after a crash: the
    marker there, the weights not. The next fill fetches again, and the sweep removes it."""
    tier, manifest = await filled(tmp_path)
    key = entry_key(manifest)
    path = tier.entry_path(key)
    if damage == "no-manifest-copy":
        (path / MANIFEST_NAME).unlink()
    elif damage == "another-models-manifest":
        other = LocalStore(tmp_path / "bucket" / "other")
        theirs = await push_directory(other, make_model_dir(tmp_path / "o", mb=0.1, seed=7))
        (path / MANIFEST_NAME).write_bytes(theirs.dumps())
    elif damage == "file-of-wrong-size":
        with (path / "model.safetensors").open("r+b") as f:
            f.truncate(100)
    else:
        for child in list(path.iterdir()):
            if child.name != COMPLETE:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    assert tier.lookup(key) is None
    store = LocalStore(tmp_path / "bucket" / "m")
    report = await fetch_to_tier(store, LocalTier(tier.root))
    assert not report.hit and tier.lookup(key) == path  # filled again, whole
    if damage != "file-of-wrong-size":
        return
    with (path / "model.safetensors").open("r+b") as f:
        f.truncate(100)
    assert tier.clean_stale() == 1 and not path.exists()


async def test_the_sweep_leaves_complete_and_locked_entries(tmp_path: Path) -> None:
    tier, manifest = await filled(tmp_path)
    filling = "ab" * 16
    (tier.entry_path(filling)).mkdir()
    (tier.entry_path(filling) / "model.safetensors.partial").write_bytes(b"half")
    crashed = tier.entry_path("cd" * 16)
    crashed.mkdir()
    (crashed / COMPLETE).write_text("{}")  # a marker is not enough
    stray = tier.root / "entries" / "stray-file"  # not an entry key: never ours to remove
    stray.write_text("x")
    async with tier.locked(filling):  # another process is filling it
        assert tier.clean_stale() == 1
    assert tier.entry_path(filling).exists() and not crashed.exists() and stray.exists()
    assert not (tier.root / "locks" / "stray-file.lock").exists()
    assert [e.key for e in tier.entries()] == [entry_key(manifest)]
    assert tier.clean_stale() == 1 and not tier.entry_path(filling).exists()


async def test_a_filler_sharing_its_lock_is_never_evicted_in_the_gap(tmp_path: Path) -> None:
    """flock lets go before it locks again when a lock turns shared: the hold lock, taken
    shared first, keeps a remover that slips into that gap from the entry."""
    tier, manifest = await filled(tmp_path)
    key = entry_key(manifest)
    held = await tier.lock(key)  # a filler, done filling
    hold = os.open(tier.root / "locks" / f"{key}.hold", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(hold, fcntl.LOCK_SH)  # what share() takes first...
        held.release()  # ...and the gap: the entry's first lock is free
        assert not tier.evict(key) and tier.lookup(key) is not None
        assert tier.clean_stale() == 0
    finally:
        os.close(hold)
    shared = await tier.lock(key)
    shared.share()  # the whole of it
    try:
        assert not tier.evict(key)
    finally:
        shared.release()
    assert tier.evict(key)


# ---------------------------------------------------------------------------------- evict
@pytest.mark.parametrize(
    "key", ["", ".", "..", "../x", "../../x", "/abs", "entries", "x/../..", "A" * 32, "0" * 31]
)
async def test_evict_refuses_anything_but_an_entry_key(tmp_path: Path, key: str) -> None:
    tier, _manifest = await filled(tmp_path)
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    before = files_under(tmp_path)
    with pytest.raises(BadEntryKey, match="not a local tier entry key"):
        tier.evict(key)
    with pytest.raises(BadEntryKey):
        tier.resolve([key])
    assert files_under(tmp_path) == before and len(tier.entries()) == 1


async def test_resolve_names_entries_by_key_or_by_uri(tmp_path: Path) -> None:
    tier, first = await filled(tmp_path, "m")
    second_store = LocalStore(tmp_path / "bucket" / "n")
    second = await push_directory(second_store, make_model_dir(tmp_path / "src-n", mb=0.1, seed=2))
    await fetch_to_tier(second_store, tier)
    a, b = entry_key(first), entry_key(second)
    assert tier.resolve([a]) == [a]
    assert tier.resolve([f"file://{tmp_path}/bucket/n", b, a]) == [b, a]
    assert tier.resolve([str(second_store.uri) + "/"]) == [b]
    with pytest.raises(BadEntryKey, match="no entry of file://"):
        tier.resolve([f"file://{tmp_path}/bucket/none"])
    with pytest.raises(BadEntryKey, match=f"no entry {'c' * 32}"):
        tier.resolve(["c" * 32])
    with pytest.raises(BadEntryKey, match="neither an entry key"):
        tier.resolve([a, "../x"])
    assert is_entry_key(a) and not is_entry_key(a + "0")


async def test_an_entry_in_use_is_never_evicted(tmp_path: Path) -> None:
    tier, manifest = await filled(tmp_path)
    key = entry_key(manifest)
    held = await tier.lock(key, shared=True)
    try:
        assert not tier.evict(key) and tier.lookup(key) is not None
    finally:
        held.release()
    assert tier.evict(key) and tier.entries() == []


async def test_evict_removes_a_symlinked_entry_without_following_it(tmp_path: Path) -> None:
    tier = LocalTier(tmp_path / "tier")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / COMPLETE).write_text("{}")
    (outside / "precious").write_text("keep me")
    key = "ef" * 16
    tier.entry_path(key).symlink_to(outside)
    assert tier.lookup(key) is None  # a link is never an entry
    assert tier.evict(key)
    assert not tier.entry_path(key).is_symlink()
    assert (outside / COMPLETE).exists() and (outside / "precious").exists()
