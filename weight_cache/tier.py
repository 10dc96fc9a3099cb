"""The local NVMe tier: complete, verified copies of models, shared by every process on the node.

Layout under ``root``::

    entries/<key>/<files...>              a model's files (key: hash of its manifest's contents)
    entries/<key>/ember-manifest.json     the manifest they were verified against
    entries/<key>/.ember-complete         written last, by the commit alone
    locks/<key>.lock                      flock()ed by whoever fills, uses or evicts the entry
    locks/<key>.hold                      taken shared by a filler before it shares its lock

A file is written as ``<name>.partial``, checked (size, digests, safetensors header) and renamed;
only when every file is in place and durable does the commit write the manifest copy and then the
marker. An entry counts as complete only when its marker is there, its manifest copy is the
manifest of its key, and every file that manifest lists is there at its size; anything else is an
incomplete entry, which the next fill of its key, or the sweep (:meth:`LocalTier.clean_stale`),
removes unless a process holds its lock. Entries past the size budget go least recently used
first, skipping any that another process holds. Keys are 32 hex digits; nothing that is not one
is ever turned into a path to remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from weight_cache.errors import BadEntryKey, CorruptCheckpoint, DiskFull, WeightCacheError
from weight_cache.manifest import COMPLETE_MARKER, MANIFEST_NAME, PARTIAL_SUFFIX, Manifest
from weight_cache.uri import parse_uri

COMPLETE = COMPLETE_MARKER
_KEY = re.compile(r"[0-9a-f]{32}")


def entry_key(manifest: Manifest) -> str:
    """The tier's key for a model: 32 hex digits of the hash of its manifest's identity."""
    return hashlib.sha256(manifest.identity().encode()).hexdigest()[:32]


def is_entry_key(text: str) -> bool:
    """Whether ``text`` has the form of an entry key (what ``ember cache ls --local`` shows)."""
    return _KEY.fullmatch(text) is not None


class EntryLock:
    """An entry's flock, held until ``release()`` (or the process ends)."""

    def __init__(self, fd: int, hold: Path) -> None:
        self._fd: int | None = fd
        self._hold_path = hold
        self._hold: int | None = None

    def share(self) -> None:
        """Turn an exclusive lock into a shared one: filled, now only in use.

        flock does not convert a lock atomically (it lets go, then locks again), so the entry's
        second lock, ``<key>.hold``, is taken shared first: a remover needs both exclusive, and
        takes the first before the second, so none can hold the second while we hold the
        first, and none that slips into the gap gets the second."""
        if self._fd is None:
            return
        self._hold = _open_lock(self._hold_path)
        fcntl.flock(self._hold, fcntl.LOCK_SH)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        """Let go of the lock (and the hold lock, if shared)."""
        for fd in (self._fd, self._hold):
            if fd is not None:
                os.close(fd)  # closing releases the lock
        self._fd = self._hold = None


@dataclass
class TierFill:
    """One process's turn at an entry, from :meth:`LocalTier.filling`.

    ``hit``: the entry was complete (at once, or once another process's fill of it ended); its
    files are at ``path`` and nothing is to be written. Otherwise this process fills ``path``
    (an empty directory, room made for the manifest) and the entry is published when the block
    ends. ``hold`` is the shared lock kept when one was asked for (release it with
    :meth:`release` once the files are no longer used); ``committed`` is the background commit.
    """

    key: str
    path: Path
    hit: bool
    hold: EntryLock | None = None
    committed: asyncio.Task[None] | None = None
    _checks: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def before_commit(self, check: Callable[[], None]) -> None:
        """Run ``check`` (blocking, in a thread) before the entry is published; if it raises,
        the fill is discarded and the error is the commit's."""
        self._checks.append(check)

    def release(self) -> None:
        """Let go of the shared lock kept with ``hold`` (a no-op without one)."""
        if self.hold is not None:
            self.hold.release()
            self.hold = None


@dataclass(frozen=True)
class TierEntry:
    """A complete entry of the tier, as ``ember cache ls --local`` shows it."""

    key: str
    path: Path
    size: int
    last_used: float
    source: str


class LocalTier:
    """The node's tier of complete, verified models under ``root`` (see the module)."""

    def __init__(self, root: str | Path, *, budget_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        for sub in ("entries", "locks"):
            try:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise disk_error(exc, str(self.root / sub)) from exc

    def entry_path(self, key: str) -> Path:
        """Where the entry ``key`` lives (whether or not it is there)."""
        return self.root / "entries" / key

    def lookup(self, key: str) -> Path | None:
        """The entry's directory if it is complete (and mark it used), else None."""
        path = self.entry_path(_checked(key))
        if _complete(path, key) is None:
            return None
        with contextlib.suppress(OSError):
            os.utime(path / COMPLETE)  # last use, for LRU
        return path

    # ------------------------------------------------------------------------------- locking
    def _lock_fd(self, key: str) -> int:
        return _open_lock(self.root / "locks" / f"{key}.lock")

    def _hold_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.hold"

    async def lock(self, key: str, *, shared: bool = False, poll_s: float = 0.05) -> EntryLock:
        """Take the entry's lock: exclusive to fill or evict it, shared to keep it while in use.
        Waiting stays cancellable (no blocked thread)."""
        fd = self._lock_fd(_checked(key))
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    return EntryLock(fd, self._hold_path(key))
                except BlockingIOError:
                    await asyncio.sleep(poll_s)
        except BaseException:
            os.close(fd)
            raise

    @contextlib.asynccontextmanager
    async def locked(self, key: str) -> AsyncIterator[None]:
        """The entry's exclusive lock for the length of the block."""
        held = await self.lock(key)
        try:
            yield
        finally:
            held.release()

    @contextlib.asynccontextmanager
    async def filling(
        self,
        manifest: Manifest,
        *,
        source: str,
        hold: bool = False,
        commit_in_background: bool = False,
    ) -> AsyncIterator[TierFill]:
        """The hit / fill / share protocol of one entry, as ``async with tier.filling(m) as f:``.

        A complete entry is a hit. Otherwise the entry's lock is taken (waiting, cancellably,
        while another process fills it: then its fill is shared, a hit too) and the block fills
        ``f.path``. When the block ends normally the files are made durable and the entry marked
        complete (after the ``before_commit`` checks), recording ``source``; if it raises, or
        the commit fails, the entry is discarded and nothing is published. With
        ``commit_in_background`` the commit runs in ``f.committed`` (holding the lock, so other
        processes wait for it rather than fill again). With ``hold`` the fill keeps a shared
        lock on the entry (``f.hold``) so no process evicts it while it is in use.
        """
        key = entry_key(manifest)
        hit = await self._hit(key, hold=hold)
        if hit is None:
            lock = await self.lock(key)
            try:
                found = self.lookup(key)  # another process may have filled it while we waited
                if found is not None:
                    if hold:
                        lock.share()
                    else:
                        lock.release()
                    hit = TierFill(key, found, True, hold=lock if hold else None)
                else:
                    path = await asyncio.to_thread(self.prepare, key, manifest)
            except BaseException:
                lock.release()
                raise
        if hit is not None:
            try:
                yield hit
            except BaseException:
                hit.release()
                raise
            return
        fill = TierFill(key, path, False)
        try:
            yield fill
        except BaseException:
            await asyncio.to_thread(self.discard, key)
            lock.release()
            raise
        publish = self._publish(fill, manifest, lock, source=source, hold=hold)
        if hold:
            fill.hold = lock
        if commit_in_background:
            fill.committed = asyncio.create_task(publish, name=f"tier-commit-{key}")
        else:
            await publish

    async def _hit(self, key: str, *, hold: bool) -> TierFill | None:
        """The entry as a hit if it is complete now (and still is once a ``hold`` is taken)."""
        if self.lookup(key) is None:
            return None
        held = await self.lock(key, shared=True) if hold else None
        found = self.lookup(key)  # still there once we hold it?
        if found is not None:
            return TierFill(key, found, True, hold=held)
        if held is not None:
            held.release()
        return None

    async def _publish(
        self, fill: TierFill, manifest: Manifest, lock: EntryLock, *, source: str, hold: bool
    ) -> None:
        """Check and commit a filled entry, then share its lock (``hold``) or let it go."""

        def check_and_commit() -> None:
            for check in fill._checks:
                check()
            self.commit(fill.key, manifest, source=source)

        work = asyncio.ensure_future(asyncio.to_thread(check_and_commit))
        try:
            # shielded: a cancelled caller must not race the thread that writes the marker
            await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.wait([work])  # the disk finishes; the entry ends complete or discarded
            raise
        finally:
            if work.cancelled() or work.exception() is not None:
                await asyncio.to_thread(self.discard, fill.key)
                lock.release()
            elif hold:
                lock.share()  # filled; from now on only in use
            else:
                lock.release()

    @contextlib.contextmanager
    def _try_lock(self, key: str) -> Iterator[bool]:
        """Both of the entry's locks, exclusive, without waiting (to remove it): the first, then
        the hold (see :meth:`EntryLock.share`); False if anyone holds either."""
        fds = []
        try:
            for path in (None, self._hold_path(key)):
                fd = self._lock_fd(key) if path is None else _open_lock(path)
                fds.append(fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
            yield True
        finally:
            for fd in fds:
                os.close(fd)

    # ------------------------------------------------------------------------------- filling
    def prepare(self, key: str, manifest: Manifest) -> Path:
        """With the lock held: clear a crashed fill's leftovers and make room. Blocking."""
        path = self.entry_path(_checked(key))
        try:
            _remove(path)
            path.mkdir(parents=True)
        except OSError as exc:
            raise disk_error(exc, str(path)) from exc
        self.evict_for(manifest.total_bytes, keep=key)
        need = space_needed(manifest, os.statvfs(path).f_frsize)
        free = shutil.disk_usage(path).free
        if free < need:
            _remove(path)
            raise DiskFull(
                f"{self.root}: {free} bytes free, the model needs {need} "
                "(its files, its manifest and the entry's marker)"
            )
        return path

    def commit(self, key: str, manifest: Manifest, *, source: str) -> Path:
        """With the lock held and every file verified and renamed into place: make the files
        durable, then write the manifest copy and, last, the marker. Blocking (it waits for the
        disk). A failure (a full disk: :class:`DiskFull`) leaves the entry unmarked."""
        path = self.entry_path(_checked(key))
        try:
            for f in manifest.files:
                target = path / f.path
                if not target.is_file() or target.stat().st_size != f.size:
                    raise CorruptCheckpoint(f"{target}: missing or of the wrong size before commit")
                _fsync(target)  # the data reaches the disk before the marker says it is there
            _write_durably(path / MANIFEST_NAME, manifest.dumps())
            for directory in sorted({(path / f.path).parent for f in manifest.files} | {path}):
                _fsync(directory)  # the renames into place are durable too
            marker = {"source": source, "size": manifest.total_bytes, "created": time.time()}
            _write_durably(path / COMPLETE, json.dumps(marker).encode())
            _fsync(path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                (path / COMPLETE).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise disk_error(exc, f"committing {path}") from exc
            raise
        return path

    def discard(self, key: str) -> None:
        """Remove the entry, complete or not (with its lock held). Blocking."""
        _remove(self.entry_path(_checked(key)))

    # ------------------------------------------------------------------------ listing, eviction
    def entries(self) -> list[TierEntry]:
        """The complete entries (incomplete ones are not entries yet, or any more)."""
        out = []
        for path in sorted((self.root / "entries").iterdir()):
            manifest = _complete(path, path.name)
            if manifest is None:
                continue
            marker = path / COMPLETE
            try:
                info = json.loads(marker.read_text())
                used = marker.stat().st_mtime
            except (OSError, ValueError):
                continue
            source = str(info.get("source", "")) if isinstance(info, dict) else ""
            out.append(TierEntry(path.name, path, manifest.total_bytes, used, source))
        return out

    def used_bytes(self) -> int:
        """The bytes the complete entries take."""
        return sum(e.size for e in self.entries())

    def resolve(self, names: Iterable[str]) -> list[str]:
        """Entry keys for ``names``: keys of complete entries as they are, and model URIs
        (``s3://...``, ``file://...``) as the keys of the entries fetched from them. Anything
        else raises :class:`BadEntryKey`, before anything is evicted."""
        entries = self.entries()
        keys: list[str] = []
        for name in names:
            if is_entry_key(name):
                if name not in {e.key for e in entries}:
                    raise BadEntryKey(
                        f"no entry {name} in the local tier {self.root} "
                        "(see `ember cache ls --local`)"
                    )
                found = [name]
            elif "://" in name:
                uri = str(parse_uri(name))
                found = [e.key for e in entries if e.source == uri]
                if not found:
                    raise BadEntryKey(f"no entry of {uri} in the local tier {self.root}")
            else:
                raise BadEntryKey(
                    f"{name!r} is neither an entry key (32 hex digits, see `ember cache ls "
                    "--local`) nor a model URI (s3://bucket/prefix or file:///dir)"
                )
            keys += [k for k in found if k not in keys]
        return keys

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
        """Remove an entry unless someone fills or uses it (holds its lock); True if removed.

        ``key`` must be an entry key (:class:`BadEntryKey` otherwise): nothing but an entry of
        this tier is ever removed."""
        with self._try_lock(_checked(key)) as mine:
            if not mine:
                return False
            _remove(self.entry_path(key))
            return True

    def clean_stale(self) -> int:
        """Remove the incomplete entries nobody holds (a crashed or killed process's fill, an
        entry whose files went missing). Entries being filled or used hold their lock."""
        removed = 0
        for path in (self.root / "entries").iterdir():
            if not is_entry_key(path.name) or _complete(path, path.name) is not None:
                continue  # never remove what is not an entry of ours
            with self._try_lock(path.name) as mine:
                if mine and _complete(path, path.name) is None:
                    _remove(path)
                    removed += 1
        return removed


def space_needed(manifest: Manifest, block: int = 4096) -> int:
    """The disk an entry takes: its files, its manifest copy and its marker, in whole blocks."""
    block = max(block, 1)

    def blocks(n: int) -> int:
        return -(-n // block) * block

    files = sum(blocks(f.size) for f in manifest.files)
    return files + blocks(len(manifest.dumps())) + block


def disk_error(exc: OSError, where: str) -> WeightCacheError:
    """An OSError as this package's error: DiskFull for a full disk or quota."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{where}: no space left on the device")
    return WeightCacheError(f"{where}: {exc.strerror or exc}")


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise disk_error(exc, str(path)) from exc


def _checked(key: str) -> str:
    if not is_entry_key(key):
        raise BadEntryKey(f"{key!r} is not a local tier entry key (32 hex digits)")
    return key


def _complete(path: Path, key: str) -> Manifest | None:
    """The entry's manifest if the entry is complete, else None. Reads only metadata."""
    try:
        if path.is_symlink() or not (path / COMPLETE).is_file():
            return None
        manifest = Manifest.loads((path / MANIFEST_NAME).read_bytes(), where=str(path))
        if entry_key(manifest) != key:
            return None
        for f in manifest.files:
            st = (path / f.path).lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_size != f.size:
                return None
    except (OSError, CorruptCheckpoint):
        return None
    return manifest


def _remove(path: Path) -> None:
    """Remove an entry's directory, its marker first: a half-removed entry is never complete."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)  # not ours to follow
        return
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        (path / COMPLETE).unlink()
    shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(target: Path, data: bytes) -> None:
    """Write ``target`` through ``target.partial``: written, fsynced, then renamed."""
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise
