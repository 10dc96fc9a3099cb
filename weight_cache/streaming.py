"""The streaming engine under a fetch: ranges read by a pool of threads, verified, landed, and
announced in order.

:func:`stream_ranges` reads one object's ranges ``concurrency`` at a time through a
:class:`~weight_cache.objects.RangeReader`. The thread that read a chunk checks it against its
digest; the range lands straight in its place in the tier file (a shared mapping of it, or
``pwrite``), or in a slot of a sink's :class:`Staging` ring bound for a device. The coordinating
thread takes the ranges in order as they land and tells the :class:`FetchSink`, which makes tensors
from them while later ranges are still in flight. Before the sink hears of any byte past a
safetensors file's header, the header as it arrived is compared with the manifest's tensor index
(dtype, shape and offsets of every tensor), so no tensor is ever made from an index the file
itself contradicts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

from weight_cache.errors import CorruptCheckpoint
from weight_cache.manifest import FileEntry, SafetensorsEntry, chunk_digest
from weight_cache.objects import FileCopier, RangeReader
from weight_cache.ranges import Range, Stopped, plan_ranges, read_ranges
from weight_cache.safetensors_format import parse_header
from weight_cache.tier import disk_error

log = logging.getLogger("ember.weight_cache")


class StreamedFile(Protocol):
    """What a sink needs to know of a file it is told about: a manifest's
    :class:`~weight_cache.manifest.FileEntry`, or a local file loaded onto a device."""

    @property
    def path(self) -> str:
        """The file's path within the model (the sink's key for it)."""

    @property
    def size(self) -> int:
        """The file's size in bytes."""

    @property
    def safetensors(self) -> SafetensorsEntry | None:
        """The file's tensor index, or None for a file that holds no tensors."""


class Staging(Protocol):
    """A bounded ring of (pinned) host buffers that ranges land in, for a sink bound for a device.

    With one, a range is read from the store into a slot, verified there, written to the tier
    file from there and copied to the device from there: one pass, nothing read back through a
    mapping. ``take`` blocks until a slot is free (its last copy out has completed); ``landed``
    starts the copy out of a filled slot and gives the slot back; ``give_back`` returns an
    unused one.
    """

    def reserve(self, slots: int, length: int) -> None:
        """At least ``slots`` slots of at least ``length`` bytes, before the reads start."""

    def take(self, length: int) -> tuple[int, memoryview]:
        """A free slot and a view of ``length`` bytes of it; blocks until one is free."""

    def landed(self, entry: StreamedFile, offset: int, slot: int, length: int) -> None:
        """A filled slot: copy its bytes out (from ``offset`` of the file) and free it."""

    def give_back(self, slot: int) -> None:
        """Return a slot that was taken but not filled."""


class FetchSink(Protocol):
    """Told about a file's bytes as they arrive, so tensors can be made before the download ends.

    Called from the fetch's coordinating thread: ``opened`` before the first byte, ``arrived``
    each time the contiguous, verified prefix ``[0, upto)`` grows, ``finished`` once the file is
    checked and renamed to ``final``. ``staging`` is None for a sink that reads the tier file
    itself (CPU views of it).
    """

    @property
    def staging(self) -> Staging | None:
        """The ring ranges land in, or None to read the tier file itself."""

    def opened(self, entry: StreamedFile, partial: Path) -> None:
        """A file is about to arrive (``partial``: where it is written)."""

    def arrived(self, entry: StreamedFile, upto: int) -> None:
        """The verified prefix ``[0, upto)`` of the file has landed."""

    def finished(self, entry: StreamedFile, final: Path) -> None:
        """The file is complete, checked and renamed to ``final``."""


def stream_ranges(
    reader: RangeReader,
    entry: FileEntry,
    where: str,
    *,
    fd: int,
    mapped: bool = False,
    concurrency: int,
    range_bytes: int,
    progress: Callable[[int], None] | None = None,
    sink: FetchSink | None = None,
    whole: WholeFileHash | None = None,
    cancel: threading.Event,
) -> str | None:
    """Ranges read ``concurrency`` at a time, verified, landed, and announced in order.

    The ranges are ``range_bytes`` apart (:func:`~weight_cache.ranges.plan_ranges`), read by
    :func:`~weight_cache.ranges.read_ranges`. Where a range lands: with the sink's staging ring,
    in a slot, written to the tier file (``fd``) and copied to the device from there. Otherwise
    into the tier file: with its blocks reserved (``mapped``) straight through a shared mapping,
    so a body goes from the socket into the page cache with one copy; without (a filesystem
    that cannot reserve) a write could hit a full disk as SIGBUS there, so each range goes
    through a per-thread buffer and ``pwrite``, which fails with ENOSPC instead.

    A range with a chunk digest is verified by the thread that read it (and read once more
    before it is refused); the whole-file sha256 is then ``whole``'s job, beside the download.
    Without chunk digests the coordinating thread hashes the ranges in order and returns the
    whole-file digest.

    A safetensors file streamed into the tier has its header, read back from the tier file once
    the prefix covers it, compared with the manifest's index (:func:`check_header`) before the
    sink hears of any byte: the tensors it makes follow an index the file agrees with.
    """
    size = entry.size
    staging = sink.staging if sink is not None else None
    if staging is not None:
        staging.reserve(concurrency + 2, min(range_bytes, max(size, 1)))
    # a fetch with nothing hashing beside it (no chunk table, or an empty file) hashes in order
    in_order = hashlib.sha256() if whole is None else None
    if not size:
        return in_order.hexdigest() if in_order is not None else None
    # a local file is copied in the kernel, file to file, where no staging ring wants the bytes
    copier = reader if staging is None and isinstance(reader, FileCopier) else None
    mm = None
    view = None
    # the tier file's mapping: where ranges land without a staging ring (read-only where the
    # kernel copies: what the chunk digests and an in-order hash read), and what an in-order
    # hash reads; a staged, chunk-verified fetch needs neither
    if copier is not None:
        if entry.chunks is not None or in_order is not None:
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    elif staging is None or in_order is not None:
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    if mm is not None:
        view = memoryview(mm)
    buffers = threading.local()
    # where the header ends: the file's own index is checked once the prefix reaches it
    header_end = entry.safetensors.header_bytes if entry.safetensors else None

    def land(item: Range) -> None:
        offset, length = item.offset, item.length
        if copier is not None:
            landed = view[offset : offset + length] if view is not None else None
            _land_verified(
                lambda: _copy(copier, fd, offset, length, entry), landed, entry, offset, where
            )
            return
        if staging is not None:
            slot, buf = staging.take(length)
            try:
                _read_verified(reader, entry, offset, buf, where)
                _pwrite(fd, buf, offset, entry)
                staging.landed(entry, offset, slot, length)
            except BaseException:
                staging.give_back(slot)
                raise
            return
        assert view is not None
        if mapped:
            _read_verified(reader, entry, offset, view[offset : offset + length], where)
            return
        scratch_buf: bytearray | None = getattr(buffers, "buf", None)
        if scratch_buf is None or len(scratch_buf) < length:
            scratch_buf = buffers.buf = bytearray(length)
        scratch = memoryview(scratch_buf)[:length]
        _read_verified(reader, entry, offset, scratch, where)
        _pwrite(fd, scratch, offset, entry)

    def arrived(item: Range) -> None:
        nonlocal header_end
        if in_order is not None and view is not None:
            in_order.update(view[item.offset : item.end])
        elif whole is not None:
            whole.feed(item.offset, item.length)
        if progress is not None:
            progress(item.length)
        if header_end is not None and item.end >= header_end:
            check_header(fd, entry, where)
            header_end = None
        if sink is not None:
            sink.arrived(entry, item.end)

    try:
        read_ranges(
            plan_ranges(size, range_bytes),
            land,
            concurrency=concurrency,
            cancel=cancel,
            arrived=arrived,
        )
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
    _land_verified(lambda: reader.read_into(offset, buffer), buffer, entry, offset, where)


def _land_verified(
    fill: Callable[[], None],
    landed: memoryview | None,
    entry: FileEntry,
    offset: int,
    where: str,
) -> None:
    """Land one range with ``fill``; with a chunk table, check what ``landed`` holds against its
    digest, and land it once more before refusing it."""
    fill()
    if entry.chunks is None:
        return
    assert landed is not None
    want = entry.chunks.digest(offset)
    if chunk_digest(landed) == want:
        return
    index = offset // entry.chunks.size
    log.warning("%s: chunk %d failed its digest; reading it again", where, index)
    fill()
    if chunk_digest(landed) != want:
        raise CorruptCheckpoint(
            f"{where}: chunk {index} (bytes {offset}-{offset + len(landed)}) does not match "
            "its digest in the manifest, read twice"
        )


def _copy(copier: FileCopier, fd: int, offset: int, length: int, entry: FileEntry) -> None:
    try:
        copier.copy_into(fd, offset, length)
    except OSError as exc:
        raise disk_error(exc, f"copying {entry.path}") from exc


def _pwrite(fd: int, data: memoryview, offset: int, entry: FileEntry) -> None:
    try:
        done = 0
        while done < len(data):  # a regular file may take fewer bytes than offered
            done += os.pwrite(fd, data[done:], offset + done)
    except OSError as exc:
        raise disk_error(exc, f"writing {entry.path}") from exc


class WholeFileHash:
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
        """Hash the next verified range (in file order)."""
        self._queue.put((offset, length))

    def finish(self) -> Future[str]:
        """No more ranges: the digest, once the thread has read them all."""
        self._queue.put(None)
        return self._result

    def abort(self) -> None:
        """Stop hashing (the fetch failed); the result is an exception."""
        self._cancel.set()
        self._queue.put(None)

    def _run(self) -> None:
        digest = hashlib.sha256()
        view = memoryview(self._mm)
        try:
            while (item := self._queue.get()) is not None:
                if self._cancel.is_set():
                    raise Stopped
                offset, length = item
                digest.update(view[offset : offset + length])
            if self._cancel.is_set():
                raise Stopped
            self._result.set_result(digest.hexdigest())
        except BaseException as exc:
            self._result.set_exception(exc)
        finally:
            view.release()
            self._mm.close()


def check_header(fd: int, entry: FileEntry, where: str) -> None:
    """The safetensors header as it landed in the tier file, against the manifest's index."""
    assert entry.safetensors is not None
    try:
        head = os.pread(fd, entry.safetensors.header_bytes, 0)
    except OSError as exc:
        raise disk_error(exc, f"reading back {entry.path}") from exc
    index = parse_header(head, entry.size, what=where)
    entry.safetensors.check_header(index, where=where)
