"""Streaming a model from its store into the local tier: concurrent ranged reads, bounded memory.

Each file is cut into ``chunk_bytes`` ranges read ``concurrency`` at a time by a pool of threads,
each range pinned to the ETag from the manifest and read from the socket straight into its place
in the ``.partial`` file (a shared mapping of it; the page cache is the only buffer, and the
kernel writes it back and reclaims it as it would any file's). The coordinating thread takes the
ranges in order as they land: it hashes them and tells a :class:`FetchSink`, which makes tensors
from them while later ranges are still in flight. Space is reserved with ``posix_fallocate``
first, so a full disk fails before any download. The file is renamed into place only once its
size, sha256 and safetensors header match the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from weight_cache.errors import CorruptCheckpoint, ObjectMissing
from weight_cache.manifest import MANIFEST_NAME, FileEntry, Manifest
from weight_cache.safetensors_format import parse_header
from weight_cache.stores import ObjectStore, RangeReader, join_key
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
            await fetch_file(
                store,
                entry,
                path / entry.path,
                concurrency=threads,
                chunk_bytes=chunk_bytes,
                progress=progress,
                sink=sink,
            )

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

    async def commit() -> None:
        work = asyncio.ensure_future(
            asyncio.to_thread(tier.commit, key, manifest, source=store.uri)
        )
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


class FetchSink(Protocol):
    """Told about a file's bytes as they arrive, so tensors can be made before the download ends.

    Called from the fetch's coordinating thread: ``opened`` before the first byte, ``arrived``
    each time the contiguous prefix ``[0, upto)`` grows, ``finished`` once the file is verified
    and renamed to ``final``.
    """

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
) -> None:
    """Stream one file to ``target`` (via ``target.partial``), verified against the manifest."""
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
        await asyncio.shield(work)
    except asyncio.CancelledError:
        cancel.set()  # the threads stop after their current range; the partial file goes
        await asyncio.wait([work])
        raise


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
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        reader.close()
        raise disk_error(exc, str(partial)) from exc
    try:
        try:
            digest = hashlib.sha256()
            if entry.size:
                mapped = _reserve(fd, entry.size, partial)
                if sink is not None:
                    sink.opened(entry, partial)
                _pull(
                    reader,
                    entry,
                    fd,
                    mapped,
                    digest,
                    concurrency,
                    chunk_bytes,
                    progress,
                    sink,
                    cancel,
                )
            elif sink is not None:
                sink.opened(entry, partial)
        finally:
            reader.close()  # a local file checks here that it was not replaced while read
        if digest.hexdigest() != entry.sha256:
            raise CorruptCheckpoint(
                f"{where}: sha256 {digest.hexdigest()} does not match the manifest's {entry.sha256}"
            )
        if entry.safetensors is not None:
            _check_header(partial, entry, where)
        os.close(fd)
        fd = -1
        partial.replace(target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    if sink is not None:
        sink.finished(entry, target)


def _pull(
    reader: RangeReader,
    entry: FileEntry,
    fd: int,
    mapped: bool,
    digest: hashlib._Hash,
    concurrency: int,
    chunk_bytes: int,
    progress: Callable[[int], None] | None,
    sink: FetchSink | None,
    cancel: threading.Event,
) -> None:
    """Ranges read ``concurrency`` at a time into the file; hashed and announced in order.

    With its blocks reserved the file is written through a shared mapping, so a body goes from
    the socket into the page cache with one copy. Without (a filesystem that cannot reserve) a
    write could hit a full disk as SIGBUS there, so each range goes through a per-thread buffer
    and ``pwrite``, which fails with ENOSPC instead.
    """
    size = entry.size
    mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    view = memoryview(mm)
    buffers = threading.local()

    def land(offset: int, length: int) -> None:
        if cancel.is_set():
            raise _Stopped
        if mapped:
            reader.read_into(offset, view[offset : offset + length])
            return
        buf = getattr(buffers, "buf", None)
        if buf is None or len(buf) < length:
            buf = buffers.buf = bytearray(length)
        staging = memoryview(buf)[:length]
        reader.read_into(offset, staging)
        try:
            done = 0
            while done < length:  # a regular file may take fewer bytes than offered
                done += os.pwrite(fd, staging[done:], offset + done)
        except OSError as exc:
            raise disk_error(exc, f"writing {entry.path}") from exc

    ranges = iter(range(0, size, chunk_bytes))
    pending: deque[tuple[int, int, Future[None]]] = deque()
    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="ember-fetch") as pool:

            def submit() -> None:
                offset = next(ranges, None)
                if offset is not None:
                    length = min(chunk_bytes, size - offset)
                    pending.append((offset, length, pool.submit(land, offset, length)))

            for _ in range(2 * concurrency):  # a second round queued keeps every thread busy
                submit()
            try:
                while pending:
                    offset, length, future = pending[0]
                    _wait(future, cancel)
                    pending.popleft()
                    digest.update(view[offset : offset + length])
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
        with contextlib.suppress(BufferError):  # a traceback may still hold a slice
            view.release()
            mm.close()


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
