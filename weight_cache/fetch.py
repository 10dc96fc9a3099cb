"""Streaming a model from its store into the local tier: concurrent ranged reads, bounded memory.

Each file is cut into ``chunk_bytes`` ranges read ``concurrency`` at a time with the ETag from the
manifest. A finished chunk is written at its offset into the ``.partial`` file and hashed in order
by one sink thread per file; a chunk's buffer is released only once it is written and hashed, so
at most ``concurrency`` chunks are ever held, whatever the model's size. Space is reserved with
``posix_fallocate`` first, so a full disk fails before any download.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from weight_cache.errors import CorruptCheckpoint, ObjectMissing
from weight_cache.manifest import MANIFEST_NAME, FileEntry, Manifest
from weight_cache.safetensors_format import parse_header
from weight_cache.stores import ObjectStore, join_key
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
) -> FetchReport:
    """The model's directory in the tier, streamed from ``store`` unless a copy is there.

    The files are verified and in place when this returns. Making them durable (fsync) and
    marking the entry complete waits for the disk; with ``commit_in_background`` that runs in
    ``report.committed`` (holding the entry's lock, so other processes wait for it rather than
    fetch again) while the caller already loads the files from the page cache. With ``hold``
    the report keeps a shared lock on the entry, so no process evicts it while it is in use.
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
        # small files (configs, tokenizers) first: they are needed first
        for entry in sorted(manifest.files, key=lambda f: f.size):
            await fetch_file(
                store,
                entry,
                path / entry.path,
                concurrency=concurrency,
                chunk_bytes=chunk_bytes,
                progress=progress,
            )
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


async def fetch_file(
    store: ObjectStore,
    entry: FileEntry,
    target: Path,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stream one file to ``target`` (via ``target.partial``), verified against the manifest."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    where = f"{store.uri}/{entry.path}"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise disk_error(exc, str(partial)) from exc
    sink = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ember-sink")
    try:
        if entry.size:
            await asyncio.to_thread(_reserve, fd, entry.size, partial)
        digest = await _stream(store, entry, fd, sink, concurrency, chunk_bytes, progress)
        if digest != entry.sha256:
            raise CorruptCheckpoint(
                f"{where}: sha256 {digest} does not match the manifest's {entry.sha256}"
            )
        if entry.safetensors is not None:
            await asyncio.to_thread(_check_header, partial, entry, where)
    except BaseException:
        os.close(fd)
        sink.shutdown(wait=True)
        partial.unlink(missing_ok=True)
        raise
    os.close(fd)
    sink.shutdown(wait=True)
    partial.replace(target)


async def _stream(
    store: ObjectStore,
    entry: FileEntry,
    fd: int,
    sink: ThreadPoolExecutor,
    concurrency: int,
    chunk_bytes: int,
    progress: Callable[[int], None] | None,
) -> str:
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    permits = asyncio.Semaphore(concurrency)
    ready: dict[int, bytes] = {}  # fetched, waiting for the chunks before it
    next_offset = 0
    sinks: list[asyncio.Future[None]] = []

    def write_and_hash(offset: int, data: bytes) -> None:
        try:
            os.pwrite(fd, data, offset)
        except OSError as exc:
            raise disk_error(exc, f"writing {entry.path}") from exc
        digest.update(data)

    def drain_in_order() -> None:
        nonlocal next_offset
        while next_offset in ready:
            data = ready.pop(next_offset)
            offset, next_offset = next_offset, next_offset + len(data)
            done = loop.run_in_executor(sink, write_and_hash, offset, data)
            sinks.append(done)
            done.add_done_callback(lambda _: permits.release())

    async def fetch(offset: int, length: int) -> None:
        try:
            data = await store.read_range(entry.path, start=offset, length=length, etag=entry.etag)
        except BaseException:
            permits.release()  # so the scheduling loop wakes up and sees the failure
            raise
        ready[offset] = data
        if progress is not None:
            progress(length)
        drain_in_order()

    tasks: list[asyncio.Task[None]] = []
    try:
        for offset in range(0, entry.size, chunk_bytes):
            await permits.acquire()
            failed = next((t for t in tasks if t.done() and t.exception()), None)
            if failed is not None:
                await failed  # raises its error; the handler below cancels the rest
            length = min(chunk_bytes, entry.size - offset)
            tasks.append(asyncio.create_task(fetch(offset, length)))
        await asyncio.gather(*tasks)
        await asyncio.gather(*sinks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, *sinks, return_exceptions=True)
        raise
    if next_offset != entry.size:
        raise CorruptCheckpoint(
            f"{store.uri}/{entry.path}: got {next_offset} of {entry.size} bytes"
        )
    return digest.hexdigest()


def _reserve(fd: int, size: int, path: Path) -> None:
    """Claim the file's blocks up front, so a full disk fails before the download starts."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise disk_error(exc, str(path)) from exc
        os.ftruncate(fd, size)  # a filesystem without fallocate: size it, blocks come later


def _check_header(path: Path, entry: FileEntry, where: str) -> None:
    assert entry.safetensors is not None
    with path.open("rb") as f:
        head = f.read(entry.safetensors.header_bytes)
    index = parse_header(head, entry.size, what=where)
    if {t.name: (t.start, t.end) for t in index.tensors} != {
        n: tuple(t.offsets) for n, t in entry.safetensors.tensors.items()
    }:
        raise CorruptCheckpoint(f"{where}: tensor index differs from the manifest's")
