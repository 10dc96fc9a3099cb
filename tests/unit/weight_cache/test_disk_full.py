"""A disk that fills at any write of a pull, the tier's commit (manifest copy, marker, fsyncs)
included, fails it with ``DiskFull``, never a traceback of another type, and leaves no entry
marked complete and no partial file; the space check counts the manifest and the marker."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_model_dir
from weight_cache.errors import DiskFull
from weight_cache.fetch import fetch_to_tier
from weight_cache.local import FileRangeReader, LocalStore
from weight_cache.push import push_directory
from weight_cache.tier import COMPLETE, LocalTier, entry_key, space_needed

_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC


class FillingDisk:
    """Notes every write under ``root`` by kind (a create, write, pwrite, kernel copy, fsync,
    rename, new directory, fallocate or truncate) and makes the ``nth`` of kind ``kind`` fail
    with ENOSPC, as a disk filling at that moment would. By kind and count, not by position:
    the files of a pull are fetched side by side, so the order of their writes varies from run
    to run."""

    def __init__(
        self, root: Path, monkeypatch: pytest.MonkeyPatch, *, kind: str = "", nth: int = 0
    ) -> None:
        self.root = str(root)
        self.fail = (kind, nth)
        self.writes: Counter[str] = Counter()
        self.failed: str | None = None
        self.fds: set[int] = set()
        self._lock = threading.Lock()
        self._patch(monkeypatch)

    def _mine(self, path: Any) -> bool:
        return os.fspath(path).startswith(self.root)

    def _write(self, kind: str, what: object) -> None:
        with self._lock:
            self.writes[kind] += 1
            if (kind, self.writes[kind]) != self.fail:
                return
            self.failed = f"{kind} {what}"
        raise OSError(errno.ENOSPC, "No space left on device")

    def _patch(self, mp: pytest.MonkeyPatch) -> None:
        real = {n: getattr(os, n) for n in ("open", "close", "write", "pwrite", "fsync")}
        real |= {n: getattr(os, n) for n in ("replace", "rename", "mkdir", "ftruncate")}
        real["posix_fallocate"] = os.posix_fallocate
        real["copy_file_range"] = os.copy_file_range

        def open_(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            if self._mine(path) and flags & _WRITES:
                self._write("open", path)
                fd: int = real["open"](path, flags, mode, **kw)
                self.fds.add(fd)
                return fd
            return int(real["open"](path, flags, mode, **kw))

        def close(fd: int) -> None:
            self.fds.discard(fd)
            real["close"](fd)

        def on_fd(name: str) -> Callable[..., Any]:
            def call(fd: int, *args: Any) -> Any:
                if fd in self.fds:
                    self._write(name, fd)
                return real[name](fd, *args)

            return call

        def on_path(name: str) -> Callable[..., Any]:
            def call(path: Any, *args: Any, **kw: Any) -> Any:
                # a directory that is there already takes no space (EEXIST comes first)
                if self._mine(path) and not (name == "mkdir" and os.path.isdir(path)):
                    self._write(name, path)
                return real[name](path, *args, **kw)

            return call

        def copy_file_range(src: int, dst: int, count: int, *args: Any) -> int:
            if dst in self.fds:  # what it writes to is the second descriptor
                self._write("copy_file_range", dst)
            return int(real["copy_file_range"](src, dst, count, *args))

        mp.setattr(os, "open", open_)
        mp.setattr(os, "copy_file_range", copy_file_range)
        mp.setattr(os, "close", close)
        for name in ("write", "pwrite", "fsync", "posix_fallocate", "ftruncate"):
            mp.setattr(os, name, on_fd(name))
        for name in ("replace", "rename", "mkdir"):
            mp.setattr(os, name, on_path(name))


@pytest.fixture
async def store(tmp_path: Path) -> LocalStore:
    s = LocalStore(tmp_path / "bucket")
    await push_directory(s, make_model_dir(tmp_path / "src", mb=0.3), chunk_bytes=64 * 1024)
    return s


def nothing_left(root: Path) -> Iterator[str]:
    for p in root.rglob("*"):
        if p.name == COMPLETE or p.name.endswith(".partial"):
            yield str(p)


def without_fallocate(fd: int, offset: int, length: int) -> None:
    raise OSError(errno.EOPNOTSUPP, "Operation not supported")


def without_kernel_copy(src: int, dst: int, count: int, *args: Any) -> int:
    raise OSError(errno.EXDEV, "Invalid cross-device link")


def plain_reader(store: LocalStore) -> None:
    """The store's readers without their kernel copy: the bytes come through memory, as a
    remote store's do."""
    original = store.range_reader

    class Plain:
        def __init__(self, reader: FileRangeReader) -> None:
            self.read_into = reader.read_into
            self.close = reader.close

    async def reader(key: str, *, etag: str | None) -> Plain:
        return Plain(await original(key, etag=etag))

    store.range_reader = reader  # type: ignore[assignment]


# where a range's bytes are written: copied in the kernel (into reserved blocks or not), by
# hand where the kernel cannot copy between the two files, and, for a reader that hands out
# bytes, through the mapping (reserved) or with pwrite (nothing reserved, so no SIGBUS)
WAYS: dict[str, tuple[str | None, str | None]] = {
    "copied": ("copy_file_range", "pwrite"),
    "copied-unreserved": ("copy_file_range", "pwrite"),
    "copied-by-hand": ("pwrite", None),  # each file's first copy_file_range is refused
    "read-unreserved": ("pwrite", "copy_file_range"),
    "read-mapped": (None, "pwrite"),
}


@pytest.mark.parametrize("way", list(WAYS))
async def test_the_disk_filling_at_any_write_of_a_pull_is_disk_full(
    tmp_path: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    if way.endswith("unreserved"):  # a filesystem that cannot reserve
        monkeypatch.setattr(os, "posix_fallocate", without_fallocate)
    if way == "copied-by-hand":
        monkeypatch.setattr(os, "copy_file_range", without_kernel_copy)
    if way.startswith("read"):
        plain_reader(store)
    with monkeypatch.context() as mp:  # a pull that fills nothing: every write it makes
        clean = FillingDisk(tmp_path / "clean", mp)
        await fetch_to_tier(store, LocalTier(tmp_path / "clean"), concurrency=2)
    # the commit's writes are among them: the manifest copy and the marker, fsynced, renamed
    assert {"mkdir", "open", "write", "fsync", "replace", "posix_fallocate"} <= set(clean.writes)
    made, not_made = WAYS[way]
    assert made is None or made in clean.writes
    assert not_made is None or not_made not in clean.writes
    for kind, count in sorted(clean.writes.items()):
        for nth in range(1, count + 1):
            root = tmp_path / f"tier-{kind}-{nth}"
            with monkeypatch.context() as mp:
                disk = FillingDisk(root, mp, kind=kind, nth=nth)
                with pytest.raises(DiskFull, match="no space left") as info:
                    await fetch_to_tier(store, LocalTier(root), concurrency=2)
            assert disk.failed is not None and "\n" not in str(info.value)
            assert not list(nothing_left(root)), disk.failed
            if (root / "entries").exists():
                assert LocalTier(root).entries() == [], disk.failed


async def test_a_commit_that_fills_the_disk_in_the_background_leaves_no_entry(
    tmp_path: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = LocalTier(tmp_path / "tier")
    real_replace = os.replace

    def full_at_the_marker(src: Any, dst: Any) -> None:
        if os.fspath(dst).endswith(COMPLETE):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_at_the_marker)
    report = await fetch_to_tier(store, tier, commit_in_background=True)
    assert report.committed is not None
    with pytest.raises(DiskFull):
        await report.committed
    assert tier.entries() == [] and not list(nothing_left(tier.root))


async def test_the_space_check_counts_the_manifest_and_the_marker(
    tmp_path: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weight_cache.fetch import read_manifest

    manifest = await read_manifest(store)
    need = space_needed(manifest)
    assert need >= manifest.total_bytes + len(manifest.dumps()) + 1
    real = shutil.disk_usage

    def just_the_files(path: Any) -> Any:
        usage = real(path)
        return usage._replace(free=manifest.total_bytes + 4096 * len(manifest.files))

    monkeypatch.setattr(shutil, "disk_usage", just_the_files)
    tier = LocalTier(tmp_path / "tier")
    with pytest.raises(DiskFull, match="its files, its manifest and the entry's marker"):
        await fetch_to_tier(store, tier)
    assert not tier.entry_path(entry_key(manifest)).exists()
