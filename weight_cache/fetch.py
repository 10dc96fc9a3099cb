"""Streaming a model from its store into the local tier: concurrent ranged reads, bounded memory.

Each file is cut into ranges (its manifest's chunks, or ``chunk_bytes`` for a manifest without a
chunk table) read ``concurrency`` at a time by a pool of threads, each range pinned to the ETag
from the manifest. The thread that read a chunk checks it against its digest, so verification
scales with the readers. A range lands straight in its place in the ``.partial`` file (a shared
mapping of it: the page cache is the only buffer), or, for a sink bound for a GPU, in a slot of
the sink's ring of pinned buffers, from which both the tier write and the device copy go. The
coordinating thread takes the ranges in order as they land and tells a :class:`FetchSink`, which
makes tensors from them while later ranges are still in flight; the whole-file sha256 is computed
beside it and checked before the tier entry commits. A safetensors file's header is compared with
the manifest's tensor index as soon as it has arrived, before any tensor is made. Space is
reserved with ``posix_fallocate`` first, so a full disk fails before any download; a disk that
fills at any later write (a file, its rename, the commit) fails the fetch with
:class:`~weight_cache.errors.DiskFull` and leaves no entry marked complete. The streaming engine
itself is :mod:`weight_cache.streaming`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from weight_cache.errors import CorruptCheckpoint, ObjectMissing
from weight_cache.manifest import MANIFEST_NAME, FileEntry, Manifest
from weight_cache.objects import ObjectStore, RangeReader, join_key
from weight_cache.streaming import FetchSink, Staging, WholeFileHash, stream_ranges
from weight_cache.tier import EntryLock, LocalTier, disk_error

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_CONCURRENCY",
    "FetchReport",
    "FetchSink",
    "Staging",
    "check_digest",
    "fetch_file",
    "fetch_to_tier",
    "read_manifest",
    "stream_ranges",
]

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
    # The manifest the files were checked against.
    manifest: Manifest | None = None

    def release(self) -> None:
        """Let go of the shared lock kept with ``hold`` (a no-op without one)."""
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
    if manifest is None:
        manifest = await read_manifest(store)
    else:
        manifest.check(where=store.uri)  # one made in code is held to what a read one is
    plan_s = time.perf_counter() - started
    report = FetchReport(Path(), True, plan_s=plan_s, manifest=manifest)
    async with tier.filling(
        manifest, source=store.uri, hold=hold, commit_in_background=commit_in_background
    ) as fill:
        report.path, report.hit, report.hold = fill.path, fill.hit, fill.hold
        if fill.hit:
            report.plan_s = time.perf_counter() - started  # waiting for another's fill counts
        else:
            fetch_started = time.perf_counter()
            digests = await _fetch_files(
                store,
                manifest,
                fill.path,
                concurrency=concurrency,
                chunk_bytes=chunk_bytes,
                progress=progress,
                sink=sink,
            )
            report.fetch_s = time.perf_counter() - fetch_started
            report.bytes_fetched = manifest.total_bytes
            log.info(
                "fetched %s (%d bytes) in %.2fs: %.2f GB/s",
                store.uri,
                manifest.total_bytes,
                report.fetch_s,
                manifest.total_bytes / max(report.fetch_s, 1e-9) / 1e9,
            )

            def check_digests() -> None:
                for entry, digest in digests:
                    check_digest(entry, digest, f"{store.uri}/{entry.path}")

            fill.before_commit(check_digests)
    report.hold = fill.hold
    report.committed = fill.committed
    return report


async def _fetch_files(
    store: ObjectStore,
    manifest: Manifest,
    path: Path,
    *,
    concurrency: int,
    chunk_bytes: int,
    progress: Callable[[int], None] | None,
    sink: FetchSink | None,
) -> list[tuple[FileEntry, Future[str]]]:
    """Every file of ``manifest`` into the directory ``path``; the whole-file sha256s computed
    beside the chunk-verified downloads, for the caller to check before the commit."""
    digests: list[tuple[FileEntry, Future[str]]] = []
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
    return digests


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
            work.exception()  # retrieved: its Stopped is the cancellation's, not news
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
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        reader.close()
        raise disk_error(exc, str(partial)) from exc
    whole: WholeFileHash | None = None
    try:
        try:
            mapped = _reserve(fd, entry.size, partial) if entry.size else False
            if entry.chunks is not None and entry.size:
                whole = WholeFileHash(fd, entry.size, cancel)
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
        try:
            closing, fd = fd, -1
            os.close(closing)
            partial.replace(target)
        except OSError as exc:
            raise disk_error(exc, f"writing {target}") from exc
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
