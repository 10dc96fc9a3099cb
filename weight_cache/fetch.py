"""Streaming a model from its store into the local tier: concurrent ranged reads, bounded memory.

Each file is cut into ranges (its manifest's chunks, or ``chunk_bytes`` for a manifest without a
chunk table) read ``concurrency`` at a time by a pool of threads, each range pinned to the ETag
from the manifest. The thread that read a chunk checks it against its digest, so verification
scales with the readers. A range lands straight in its place in the ``.partial`` file (a shared
mapping of it: the page cache is the only buffer), or, for a sink bound for a GPU, in a slot of
the sink's ring of pinned buffers, from which both the tier write and the device copy go. The
coordinating thread takes the ranges in order as they land and tells a :class:`FetchSink`, which
makes tensors from them while later ranges are still in flight; the whole-file sha256 is computed
beside it and checked before the tier entry commits. Space is reserved with ``posix_fallocate``
first, so a full disk fails before any download.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import mmap
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from weight_cache.errors import CorruptCheckpoint, ObjectMissing
from weight_cache.manifest import MANIFEST_NAME, FileEntry, Manifest, chunk_digest
from weight_cache.objects import ObjectStore, RangeReader, join_key
from weight_cache.safetensors_format import parse_header
from weight_cache.tier import EntryLock, LocalTier, disk_error, entry_key

log = logging.getLogger("ember.weight_cache")

DEFAULT_CONCURRENCY = 8
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
MANIFEST_LIMIT = 64 * 1024 * 1024


@dataclass
class FetchReport:
    """What one fetch did; the runtime turns it into load-phase metrics."""

    path: Path
    hit: bool
    bytes_fetched: int = 0
    plan_s: float = 0.0
    fetch_s: float = 0.0
    # With ``commit_in_background``: the task making the entry durable and marking it complete.
    committed: asyncio.Task[None] | None = None
    # With ``hold``: a shared lock that keeps the entry from eviction until ``release()``.
    hold: EntryLock | None = None

    def release(self) -> None:
        if self.hold is not None:
            self.hold.release()
            self.hold = None


async def read_manifest(store: ObjectStore, prefix: str = "") -> Manifest:
    """The manifest of the model at ``prefix`` (relative to the store's own prefix)."""
    key = join_key(prefix, MANIFEST_NAME)
    model_uri = join_key(store.uri, prefix) if prefix else store.uri
    where = f"{model_uri}/{MANIFEST_NAME}"
    try:
        info = await store.head(key)
    except ObjectMissing:
        raise ObjectMissing(
            f"{where} not found: push the model with `ember cache push DIR {model_uri}`"
        ) from None
    if info.size > MANIFEST_LIMIT:
        raise CorruptCheckpoint(f"{where}: {info.size} bytes is too large for a manifest")
    raw = await store.read_range(key, start=0, length=info.size, etag=info.etag)
    return Manifest.loads(raw, where=where)


async def fetch_to_tier(
    store: ObjectStore,
    tier: LocalTier,
    *,
    manifest: Manifest | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
    commit_in_background: bool = False,
    hold: bool = False,
    sink: FetchSink | None = None,
) -> FetchReport:
    """The model's directory in the tier, streamed from ``store`` unless a copy is there.

    The files are verified and in place when this returns. Making them durable (fsync) and
    marking the entry complete waits for the disk; with ``commit_in_background`` that runs in
    ``report.committed`` (holding the entry's lock, so other processes wait for it rather than
    fetch again) while the caller already loads the files from the page cache. With ``hold``
    the report keeps a shared lock on the entry, so no process evicts it while it is in use.
    A ``sink`` sees each file's bytes as they arrive (not on a hit: the files are there).
    """
    started = time.perf_counter()
    manifest = manifest or await read_manifest(store)
    key = entry_key(manifest)
    plan_s = time.perf_counter() - started
    if tier.lookup(key) is not None:
        held = await tier.lock(key, shared=True) if hold else None
        hit = tier.lookup(key)  # still there once we hold it?
        if hit is not None:
            return FetchReport(hit, True, plan_s=plan_s, hold=held)
        if held is not None:
            held.release()
    lock = await tier.lock(key)
    try:
        hit = tier.lookup(key)  # another process may have filled it while we waited
        if hit is not None:
            if hold:
                lock.share()
            else:
                lock.release()
            elapsed = time.perf_counter() - started
            return FetchReport(hit, True, plan_s=elapsed, hold=lock if hold else None)
        path = await asyncio.to_thread(tier.prepare, key, manifest)
    except BaseException:
        lock.release()
        raise
    fetch_started = time.perf_counter()
    # whole-file sha256s computed beside the chunk-verified downloads: checked before the commit
    digests: list[tuple[FileEntry, Future[str]]] = []
    try:
        # small files (configs, tokenizers) first, all at once: each is one ranged read, and
        # their round trips overlap; then the big ones, each with every connection
        small = [f for f in manifest.files if f.size <= chunk_bytes]
        big = sorted((f for f in manifest.files if f.size > chunk_bytes), key=lambda f: f.size)
        log.debug(
            "fetching %s into %s: %d small file(s) at once, then %d big one(s) in %d-byte "
            "ranges on %d connections",
            store.uri,
            path,
            len(small),
            len(big),
            chunk_bytes,
            concurrency,
        )
        permits = asyncio.Semaphore(max(1, concurrency))

        async def one(entry: FileEntry, threads: int) -> None:
            digest = await fetch_file(
                store,
                entry,
                path / entry.path,
                concurrency=threads,
                chunk_bytes=chunk_bytes,
                progress=progress,
                sink=sink,
            )
            if digest is not None:
                digests.append((entry, digest))

        async def small_one(entry: FileEntry) -> None:
            async with permits:
                await one(entry, 1)

        smalls = [asyncio.ensure_future(small_one(entry)) for entry in small]
        try:
            await asyncio.gather(*smalls)
        except BaseException:
            for task in smalls:
                task.cancel()
            await asyncio.gather(*smalls, return_exceptions=True)
            raise
        for entry in big:
            await one(entry, concurrency)
    except BaseException:
        await asyncio.to_thread(tier.discard, key)
        lock.release()
        raise
    fetch_s = time.perf_counter() - fetch_started
    log.info(
        "fetched %s (%d bytes) in %.2fs: %.2f GB/s",
        store.uri,
        manifest.total_bytes,
        fetch_s,
        manifest.total_bytes / max(fetch_s, 1e-9) / 1e9,
    )

    def verify_and_commit() -> None:
        for entry, digest in digests:
            check_digest(entry, digest, f"{store.uri}/{entry.path}")
        tier.commit(key, manifest, source=store.uri)

    async def commit() -> None:
        work = asyncio.ensure_future(asyncio.to_thread(verify_and_commit))
        try:
            # shielded: a cancelled caller must not race the thread that writes the marker
            await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.wait([work])  # the disk finishes; the entry ends complete or discarded
            raise
        finally:
            if work.cancelled() or work.exception() is not None:
                await asyncio.to_thread(tier.discard, key)
                lock.release()
            elif hold:
                lock.share()  # filled; from now on only in use
            else:
                lock.release()

    report = FetchReport(path, False, manifest.total_bytes, plan_s, fetch_s)
    if hold:
        report.hold = lock
    if commit_in_background:
        report.committed = asyncio.create_task(commit(), name=f"tier-commit-{key}")
    else:
        await commit()
    return report


class Staging(Protocol):
    """A bounded ring of (pinned) host buffers that ranges land in, for a sink bound for a device.

    With one, a range is read from the store into a slot, verified there, written to the tier
    file from there and copied to the device from there: one pass, nothing read back through a
    mapping. ``take`` blocks until a slot is free (its last copy out has completed); ``landed``
    starts the copy out of a filled slot and gives the slot back; ``give_back`` returns an
    unused one.
    """

    def reserve(self, slots: int, length: int) -> None: ...

    def take(self, length: int) -> tuple[int, memoryview]: ...

    def landed(self, entry: FileEntry, offset: int, slot: int, length: int) -> None: ...

    def give_back(self, slot: int) -> None: ...


class FetchSink(Protocol):
    """Told about a file's bytes as they arrive, so tensors can be made before the download ends.

    Called from the fetch's coordinating thread: ``opened`` before the first byte, ``arrived``
    each time the contiguous, verified prefix ``[0, upto)`` grows, ``finished`` once the file is
    checked and renamed to ``final``. ``staging`` is None for a sink that reads the tier file
    itself (CPU views of it).
    """

    @property
    def staging(self) -> Staging | None: ...

    def opened(self, entry: FileEntry, partial: Path) -> None: ...

    def arrived(self, entry: FileEntry, upto: int) -> None: ...

    def finished(self, entry: FileEntry, final: Path) -> None: ...


async def fetch_file(
    store: ObjectStore,
    entry: FileEntry,
    target: Path,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
    sink: FetchSink | None = None,
) -> Future[str] | None:
    """Stream one file to ``target`` (via ``target.partial``), verified against the manifest.

    With a chunk table every chunk is verified as it lands and the whole-file sha256 is computed
    beside the download: the returned future gives it, and the caller checks it before the tier
    entry commits. Without one (a format 1 manifest) the whole-file digest is checked here and
    None is returned.
    """
    where = f"{store.uri}/{entry.path}"
    reader = await store.range_reader(entry.path, etag=entry.etag)
    cancel = threading.Event()
    work = asyncio.ensure_future(
        asyncio.to_thread(
            _download,
            reader,
            entry,
            target,
            where,
            concurrency=max(1, concurrency),
            chunk_bytes=max(1, chunk_bytes),
            progress=progress,
            sink=sink,
            cancel=cancel,
        )
    )
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        cancel.set()  # the threads stop after their current range; the partial file goes
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: its _Stopped is the cancellation's, not news
        raise


def check_digest(entry: FileEntry, digest: Future[str], where: str) -> None:
    """Wait for a whole-file sha256 computed beside the download and compare it. Blocking."""
    _compare_sha256(entry, digest.result(), where)


def _compare_sha256(entry: FileEntry, got: str, where: str) -> None:
    if got != entry.sha256:
        raise CorruptCheckpoint(
            f"{where}: sha256 {got} does not match the manifest's {entry.sha256}"
        )


def _download(
    reader: RangeReader,
    entry: FileEntry,
    target: Path,
    where: str,
    *,
    concurrency: int,
    chunk_bytes: int,
    progress: Callable[[int], None] | None,
    sink: FetchSink | None,
    cancel: threading.Event,
) -> Future[str] | None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        reader.close()
        raise disk_error(exc, str(partial)) from exc
    whole: _WholeFileHash | None = None
    try:
        try:
            mapped = _reserve(fd, entry.size, partial) if entry.size else False
            if entry.chunks is not None and entry.size:
                whole = _WholeFileHash(fd, entry.size, cancel)
            if sink is not None:
                sink.opened(entry, partial)
            digest = stream_ranges(
                reader,
                entry,
                where,
                fd=fd,
                mapped=mapped,
                concurrency=concurrency,
                range_bytes=entry.chunks.size if entry.chunks is not None else chunk_bytes,
                progress=progress,
                sink=sink,
                whole=whole,
                cancel=cancel,
            )
        finally:
            reader.close()  # a local file checks here that it was not replaced while read
        if digest is not None:  # hashed in order: no chunk table, or an empty file
            _compare_sha256(entry, digest, where)
        if entry.safetensors is not None:
            _check_header(partial, entry, where)
        os.close(fd)
        fd = -1
        partial.replace(target)
    except BaseException:
        if whole is not None:
            whole.abort()
        if fd >= 0:
            os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    if sink is not None:
        sink.finished(entry, target)
    return whole.finish() if whole is not None else None


def stream_ranges(
    reader: RangeReader,
    entry: FileEntry,
    where: str,
    *,
    fd: int | None,
    mapped: bool = False,
    concurrency: int,
    range_bytes: int,
    progress: Callable[[int], None] | None = None,
    sink: FetchSink | None = None,
    whole: _WholeFileHash | None = None,
    cancel: threading.Event,
) -> str | None:
    """Ranges read ``concurrency`` at a time, verified, landed, and announced in order.

    Where a range lands: with the sink's staging ring, in a slot, written to the tier file
    (``fd``; None writes nothing, for a load from a local file) and copied to the device from
    there. Otherwise into the tier file: with its blocks reserved (``mapped``) straight through
    a shared mapping, so a body goes from the socket into the page cache with one copy; without
    (a filesystem that cannot reserve) a write could hit a full disk as SIGBUS there, so each
    range goes through a per-thread buffer and ``pwrite``, which fails with ENOSPC instead.

    A range with a chunk digest is verified by the thread that read it (and read once more
    before it is refused); the whole-file sha256 is then ``whole``'s job, beside the download.
    Without chunk digests the coordinating thread hashes the ranges in order and returns the
    whole-file digest.
    """
    size = entry.size
    staging = sink.staging if sink is not None else None
    if fd is None and staging is None:
        raise ValueError("streaming without a tier file needs a sink with a staging ring")
    if staging is not None:
        staging.reserve(concurrency + 2, min(range_bytes, max(size, 1)))
    # a fetch with nothing hashing beside it (no chunk table, or an empty file) hashes in order
    # here; a local load (no tier file) hashes nothing
    in_order = hashlib.sha256() if whole is None and fd is not None else None
    if not size:
        return in_order.hexdigest() if in_order is not None else None
    mm = None
    view = None
    # the tier file's mapping: where ranges land without a staging ring, and what an in-order
    # hash reads; a staged, chunk-verified fetch needs neither
    if fd is not None and (staging is None or in_order is not None):
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        view = memoryview(mm)
    buffers = threading.local()

    def land(offset: int, length: int) -> None:
        if cancel.is_set():
            raise _Stopped
        if staging is not None:
            slot, buf = staging.take(length)
            try:
                _read_verified(reader, entry, offset, buf, where)
                if fd is not None:
                    _pwrite(fd, buf, offset, entry)
                staging.landed(entry, offset, slot, length)
            except BaseException:
                staging.give_back(slot)
                raise
            return
        assert view is not None and fd is not None
        if mapped:
            _read_verified(reader, entry, offset, view[offset : offset + length], where)
            return
        scratch_buf: bytearray | None = getattr(buffers, "buf", None)
        if scratch_buf is None or len(scratch_buf) < length:
            scratch_buf = buffers.buf = bytearray(length)
        scratch = memoryview(scratch_buf)[:length]
        _read_verified(reader, entry, offset, scratch, where)
        _pwrite(fd, scratch, offset, entry)

    ranges = iter(range(0, size, range_bytes))
    pending: deque[tuple[int, int, Future[None]]] = deque()
    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="ember-fetch") as pool:

            def submit() -> None:
                offset = next(ranges, None)
                if offset is not None:
                    length = min(range_bytes, size - offset)
                    pending.append((offset, length, pool.submit(land, offset, length)))

            for _ in range(2 * concurrency):  # a second round queued keeps every thread busy
                submit()
            try:
                while pending:
                    offset, length, future = pending[0]
                    _wait(future, cancel)
                    pending.popleft()
                    if in_order is not None and view is not None:
                        in_order.update(view[offset : offset + length])
                    elif whole is not None:
                        whole.feed(offset, length)
                    if progress is not None:
                        progress(length)
                    if sink is not None:
                        sink.arrived(entry, offset + length)
                    submit()
            except BaseException:
                cancel.set()
                for _, _, future in pending:
                    future.cancel()
                raise
    finally:
        if view is not None and mm is not None:
            with contextlib.suppress(BufferError):  # a traceback may still hold a slice
                view.release()
                mm.close()
    return in_order.hexdigest() if in_order is not None else None


def _read_verified(
    reader: RangeReader, entry: FileEntry, offset: int, buffer: memoryview, where: str
) -> None:
    """Read one range; with a chunk table, check it, and read it once more before refusing it."""
    reader.read_into(offset, buffer)
    if entry.chunks is None:
        return
    want = entry.chunks.digest(offset)
    if chunk_digest(buffer) == want:
        return
    index = offset // entry.chunks.size
    log.warning("%s: chunk %d failed its digest; reading it again", where, index)
    reader.read_into(offset, buffer)
    if chunk_digest(buffer) != want:
        raise CorruptCheckpoint(
            f"{where}: chunk {index} (bytes {offset}-{offset + len(buffer)}) does not match "
            "its digest in the manifest, read twice"
        )


def _pwrite(fd: int, data: memoryview, offset: int, entry: FileEntry) -> None:
    try:
        done = 0
        while done < len(data):  # a regular file may take fewer bytes than offered
            done += os.pwrite(fd, data[done:], offset + done)
    except OSError as exc:
        raise disk_error(exc, f"writing {entry.path}") from exc


class _WholeFileHash:
    """A file's sha256 in a thread of its own, fed its verified ranges in order.

    Every chunk was already checked against its own digest by the thread that read it, so the
    tensors need not wait for this; the tier entry does (see :func:`check_digest`). It reads the
    file back through its own read-only mapping, from the page cache the ranges just filled.
    """

    def __init__(self, fd: int, size: int, cancel: threading.Event) -> None:
        self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        self._queue: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._cancel = cancel
        self._result: Future[str] = Future()
        self._thread = threading.Thread(target=self._run, name="ember-sha256", daemon=True)
        self._thread.start()

    def feed(self, offset: int, length: int) -> None:
        self._queue.put((offset, length))

    def finish(self) -> Future[str]:
        self._queue.put(None)
        return self._result

    def abort(self) -> None:
        self._cancel.set()
        self._queue.put(None)

    def _run(self) -> None:
        digest = hashlib.sha256()
        view = memoryview(self._mm)
        try:
            while (item := self._queue.get()) is not None:
                if self._cancel.is_set():
                    raise _Stopped
                offset, length = item
                digest.update(view[offset : offset + length])
            if self._cancel.is_set():
                raise _Stopped
            self._result.set_result(digest.hexdigest())
        except BaseException as exc:
            self._result.set_exception(exc)
        finally:
            view.release()
            self._mm.close()


def _wait(future: Future[None], cancel: threading.Event) -> None:
    while True:
        try:
            future.result(timeout=0.25)
            return
        except TimeoutError:
            if cancel.is_set():
                raise _Stopped from None


class _Stopped(Exception):
    """The fetch was cancelled (or another range failed): stop before the next range."""


def _reserve(fd: int, size: int, path: Path) -> bool:
    """Claim the file's blocks up front, so a full disk fails before the download starts.

    False when the filesystem cannot reserve: the file is only sized, its blocks come later.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise disk_error(exc, str(path)) from exc
        try:
            os.ftruncate(fd, size)
        except OSError as exc2:
            raise disk_error(exc2, str(path)) from exc2
        return False
    return True


def _check_header(path: Path, entry: FileEntry, where: str) -> None:
    assert entry.safetensors is not None
    with path.open("rb") as f:
        head = f.read(entry.safetensors.header_bytes)
    index = parse_header(head, entry.size, what=where)
    if {t.name: (t.start, t.end) for t in index.tensors} != {
        n: tuple(t.offsets) for n, t in entry.safetensors.tensors.items()
    }:
        raise CorruptCheckpoint(f"{where}: tensor index differs from the manifest's")
