"""A local directory as an object store: ``file:///abs/dir`` (or a plain path).

The ETag is derived from size, modification time and inode, so a file replaced or rewritten
while a load reads it fails the load instead of mixing two versions.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import threading
import weakref
from pathlib import Path
from typing import Self

from weight_cache.errors import BadSource, ObjectChanged, ObjectMissing
from weight_cache.objects import ClosedOnExit, ObjectInfo, Progress


class LocalStore(ClosedOnExit):
    """A directory as a store. Nothing to connect to: it opens as it is made, and closing it
    releases the file descriptors of the readers it handed out that are still open."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.uri = f"file://{self.root}"
        self._readers: weakref.WeakSet[FileRangeReader] = weakref.WeakSet()

    async def __aenter__(self) -> Self:
        return self

    async def aclose(self) -> None:
        # whoever left them open is gone: no ETag check, just the descriptors
        """Close the readers still open."""
        for reader in list(self._readers):
            reader.release()
        self._readers.clear()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise BadSource(f"key {key!r} leaves {self.root}")
        return path

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        tag = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()).hexdigest()
        return ObjectInfo(key, st.st_size, f'"{tag}"')

    async def head(self, key: str) -> ObjectInfo:
        """See :meth:`ObjectStore.head`."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectMissing(f"{self.uri}/{key} does not exist")
        return self._info(key, path)

    async def read_range(self, key: str, *, start: int, length: int, etag: str | None) -> bytes:
        """See :meth:`ObjectStore.read_range`."""
        path = self._path(key)

        def read() -> bytes:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise ObjectMissing(f"{self.uri}/{key} does not exist") from None
            try:
                if etag is not None and self._info(key, path).etag != etag:
                    raise ObjectChanged(f"{self.uri}/{key} changed since the load was planned")
                data = os.pread(fd, length, start)
            finally:
                os.close(fd)
            if len(data) != length:
                raise ObjectChanged(
                    f"{self.uri}/{key}: wanted {length} bytes at {start}, the file has fewer"
                )
            return data

        return await asyncio.to_thread(read)

    async def range_reader(self, key: str, *, etag: str | None) -> FileRangeReader:
        """See :meth:`ObjectStore.range_reader`."""
        path = self._path(key)
        reader = await asyncio.to_thread(FileRangeReader, path, f"{self.uri}/{key}", etag)
        self._readers.add(reader)
        return reader

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """See :meth:`ObjectStore.list`."""

        def walk() -> list[ObjectInfo]:
            base = self._path(prefix) if prefix else self.root
            if not base.exists():
                return []
            return sorted(
                (
                    self._info(str(p.relative_to(self.root)), p)
                    for p in base.rglob("*")
                    if p.is_file()
                ),
                key=lambda o: o.key,
            )

        return await asyncio.to_thread(walk)

    async def put_file(
        self, key: str, path: Path, *, progress: Progress | None = None
    ) -> ObjectInfo:
        """See :meth:`ObjectStore.put_file`."""
        target = self._path(key)

        def copy() -> ObjectInfo:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(path, partial)
            partial.replace(target)
            return self._info(key, target)

        info = await asyncio.to_thread(copy)
        if progress is not None:
            progress(info.size)
        return info

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """See :meth:`ObjectStore.put_bytes`."""
        target = self._path(key)

        def write() -> ObjectInfo:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(data)
            partial.replace(target)
            return self._info(key, target)

        return await asyncio.to_thread(write)

    async def delete(self, key: str) -> None:
        """See :meth:`ObjectStore.delete`."""
        await asyncio.to_thread(self._path(key).unlink, True)


# copy_file_range's answers for "not between these two files": copy through a buffer instead
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})
_SCRATCH_BYTES = 8 * 1024 * 1024


class FileRangeReader:
    """``preadv`` (or ``copy_file_range``) from one open descriptor; the ETag is checked when
    opened and when closed."""

    def __init__(self, path: Path, where: str, etag: str | None) -> None:
        self.where = where
        self._path = path
        self._etag = etag
        self._lock = threading.Lock()  # the fetch's threads and the store may close it at once
        self._kernel_copy = True  # until copy_file_range says it cannot
        self._scratch = threading.local()  # each thread's buffer where it cannot
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectMissing(f"{where} does not exist") from None
        try:
            self._check()
        except BaseException:
            self.release()
            raise

    @property
    def closed(self) -> bool:
        """Whether the reader was closed."""
        return self._fd < 0

    def _check(self) -> None:
        if self._etag is None:
            return
        try:
            etag = LocalStore._info("", self._path).etag
        except FileNotFoundError:
            raise ObjectChanged(f"{self.where} vanished while it was read") from None
        if etag != self._etag:
            raise ObjectChanged(f"{self.where} changed since the load was planned")

    def read_into(self, start: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the file's bytes from ``offset``."""
        done = 0
        while done < len(buffer):
            n = os.preadv(self._fd, [buffer[done:]], start + done)
            if n == 0:
                raise ObjectChanged(
                    f"{self.where}: wanted {len(buffer)} bytes at {start}, the file has fewer"
                )
            done += n

    def copy_into(self, fd: int, start: int, length: int) -> None:
        """Copy ``length`` bytes from ``start`` into ``fd`` at the same offset, in the kernel
        (``copy_file_range``); through a buffer of this thread's where the kernel cannot."""
        done = 0
        while done < length and self._kernel_copy:
            try:
                n = os.copy_file_range(self._fd, fd, length - done, start + done, start + done)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                self._kernel_copy = False  # another filesystem, an old kernel: copy by hand
                break
            if n == 0:
                raise ObjectChanged(
                    f"{self.where}: wanted {length} bytes at {start}, the file has fewer"
                )
            done += n
        if done < length:
            self._copy_by_hand(fd, start + done, length - done)

    def _copy_by_hand(self, fd: int, start: int, length: int) -> None:
        buf: bytearray | None = getattr(self._scratch, "buf", None)
        if buf is None or len(buf) < min(length, _SCRATCH_BYTES):
            buf = self._scratch.buf = bytearray(min(length, _SCRATCH_BYTES))
        view = memoryview(buf)
        for at in range(start, start + length, len(buf)):
            piece = view[: min(len(buf), start + length - at)]
            self.read_into(at, piece)
            written = 0
            while written < len(piece):  # a regular file may take fewer bytes than offered
                written += os.pwrite(fd, piece[written:], at + written)

    def close(self) -> None:
        """Release the descriptor; raises if the file was replaced while it was read."""
        if self.closed:
            return
        try:
            self._check()  # replaced while we read: what we read may be a mix
        finally:
            self.release()

    def release(self) -> None:
        """Release the descriptor, with no check: for a reader nobody reads from any more."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
