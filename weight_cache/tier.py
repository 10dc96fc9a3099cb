"""The local NVMe tier: complete, verified copies of models, shared by every process on the node.

Layout under ``root``::

    entries/<key>/<files...>        a model's files (key: hash of its manifest's contents)
    entries/<key>/.ember-complete   written last, atomically: the entry is whole and verified
    locks/<key>.lock                flock()ed by whoever fills or evicts the entry

A file is written as ``<name>.partial``, checked (size, sha256) and renamed; only when every file
is in place is the marker written. Whoever takes the lock of an incomplete entry removes the
partial files a crashed process left. Entries past the size budget go least recently used first,
skipping any that another process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from weight_cache.errors import CorruptCheckpoint, DiskFull, WeightCacheError
from weight_cache.manifest import MANIFEST_NAME, Manifest

COMPLETE = ".ember-complete"


def entry_key(manifest: Manifest) -> str:
    return hashlib.sha256(manifest.identity().encode()).hexdigest()[:32]


class EntryLock:
    """An entry's flock, held until ``release()`` (or the process ends)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def share(self) -> None:
        """Turn an exclusive lock into a shared one: filled, now only in use."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


@dataclass(frozen=True)
class TierEntry:
    key: str
    path: Path
    size: int
    last_used: float
    source: str


class LocalTier:
    def __init__(self, root: str | Path, *, budget_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        (self.root / "entries").mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(parents=True, exist_ok=True)

    def entry_path(self, key: str) -> Path:
        return self.root / "entries" / key

    def lookup(self, key: str) -> Path | None:
        """The entry's directory if it is complete (and mark it used), else None."""
        path = self.entry_path(key)
        marker = path / COMPLETE
        if not marker.is_file():
            return None
        with contextlib.suppress(OSError):
            os.utime(marker)  # last use, for LRU
        return path

    # ------------------------------------------------------------------------------- locking
    def _lock_fd(self, key: str) -> int:
        return os.open(self.root / "locks" / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)

    async def lock(self, key: str, *, shared: bool = False, poll_s: float = 0.05) -> EntryLock:
        """Take the entry's lock: exclusive to fill or evict it, shared to keep it while in use.
        Waiting stays cancellable (no blocked thread)."""
        fd = self._lock_fd(key)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    return EntryLock(fd)
                except BlockingIOError:
                    await asyncio.sleep(poll_s)
        except BaseException:
            os.close(fd)
            raise

    @contextlib.asynccontextmanager
    async def locked(self, key: str) -> AsyncIterator[None]:
        held = await self.lock(key)
        try:
            yield
        finally:
            held.release()

    @contextlib.contextmanager
    def _try_lock(self, key: str) -> Iterator[bool]:
        fd = self._lock_fd(key)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------------- filling
    def prepare(self, key: str, manifest: Manifest) -> Path:
        """With the lock held: clear a crashed fill's leftovers and make room. Blocking."""
        path = self.entry_path(key)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        need = manifest.total_bytes
        self.evict_for(need, keep=key)
        free = shutil.disk_usage(path).free
        if free < need:
            shutil.rmtree(path, ignore_errors=True)
            raise DiskFull(f"{self.root}: {free} bytes free, the model needs {need}")
        return path

    def commit(self, key: str, manifest: Manifest, *, source: str) -> Path:
        """With the lock held and every file renamed into place: make the files durable, then
        write the marker. Blocking (it waits for the disk)."""
        path = self.entry_path(key)
        for f in manifest.files:
            target = path / f.path
            if not target.is_file() or target.stat().st_size != f.size:
                raise CorruptCheckpoint(f"{target}: missing or of the wrong size before commit")
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data reaches the disk before the marker says it is there
            finally:
                os.close(fd)
        (path / MANIFEST_NAME).write_bytes(manifest.dumps())
        marker = {"source": source, "size": manifest.total_bytes, "created": time.time()}
        partial = path / (COMPLETE + ".partial")
        with partial.open("w") as out:
            json.dump(marker, out)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path / COMPLETE)
        dir_fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    def discard(self, key: str) -> None:
        shutil.rmtree(self.entry_path(key), ignore_errors=True)

    # ------------------------------------------------------------------------ listing, eviction
    def entries(self) -> list[TierEntry]:
        out = []
        for path in sorted((self.root / "entries").iterdir()):
            marker = path / COMPLETE
            try:
                info = json.loads(marker.read_text())
                used = marker.stat().st_mtime
            except (OSError, ValueError):
                continue  # incomplete: not an entry yet
            out.append(
                TierEntry(
                    path.name, path, int(info.get("size", 0)), used, str(info.get("source", ""))
                )
            )
        return out

    def used_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def evict_for(self, need: int, *, keep: str | None = None) -> list[str]:
        """Evict least recently used entries until ``need`` more bytes fit the budget."""
        if self.budget_bytes is None:
            return []
        evicted = []
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        used = sum(e.size for e in entries)
        for e in entries:
            if used + need <= self.budget_bytes:
                break
            if e.key == keep:
                continue
            if self.evict(e.key):
                used -= e.size
                evicted.append(e.key)
        if used + need > self.budget_bytes:
            raise DiskFull(
                f"{self.root}: the model needs {need} bytes, the {self.budget_bytes}-byte budget "
                f"has {max(0, self.budget_bytes - used)} left after evicting what is not in use"
            )
        return evicted

    def evict(self, key: str) -> bool:
        """Remove an entry unless someone fills or uses it (holds its lock); True if removed."""
        with self._try_lock(key) as mine:
            if not mine:
                return False
            path = self.entry_path(key)
            with contextlib.suppress(FileNotFoundError):
                (path / COMPLETE).unlink()  # first: a half-removed entry is never "complete"
            shutil.rmtree(path, ignore_errors=True)
            return True

    def clean_stale(self) -> int:
        """Remove incomplete entries nobody is filling (a crashed process's leftovers)."""
        removed = 0
        for path in (self.root / "entries").iterdir():
            if (path / COMPLETE).exists():
                continue
            with self._try_lock(path.name) as mine:
                if mine and not (path / COMPLETE).exists():
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
        return removed


def disk_error(exc: OSError, where: str) -> WeightCacheError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{where}: no space left on the device")
    return WeightCacheError(f"{where}: {exc.strerror or exc}")
