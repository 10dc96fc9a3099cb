"""Object stores behind one small seam: S3 (any S3-compatible endpoint) and a local directory.

URIs: ``s3://bucket/prefix`` and ``file:///abs/dir`` (or a plain path). Keys are relative to the
URI's prefix, ``/``-separated. Reads name the ETag seen when the load was planned, so an object
replaced mid-load fails with :class:`ObjectChanged` instead of mixing two versions.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from weight_cache.errors import BadSource, ObjectChanged, ObjectMissing

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class ObjectStore(Protocol):
    """What the cache needs from a store. ``uri`` names the prefix, for messages and cache keys."""

    uri: str

    async def head(self, key: str) -> ObjectInfo: ...

    async def read_range(self, key: str, *, start: int, length: int, etag: str | None) -> bytes:
        """Exactly ``length`` bytes from ``start``; raises rather than return fewer."""
        ...

    async def range_reader(self, key: str, *, etag: str | None) -> RangeReader:
        """A reader for the fetch threads: blocking ranged reads straight into caller memory."""
        ...

    async def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    async def put_file(
        self, key: str, path: Path, *, progress: Progress | None = None
    ) -> ObjectInfo: ...

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    async def delete(self, key: str) -> None: ...

    async def aclose(self) -> None: ...


class RangeReader(Protocol):
    """Blocking ranged reads of one object, safe to call from several threads at once.

    The hot path of a fetch: bytes land directly in the destination (the tier file's mapping),
    with no intermediate ``bytes`` objects and no event loop in between.
    """

    def read_into(self, start: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the object's bytes from ``start``; raise rather than fill less."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceURI:
    scheme: str  # "s3" or "file"
    bucket: str  # s3 bucket; empty for files
    prefix: str  # s3 key prefix without trailing "/", or an absolute directory

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"file://{self.prefix}"


def parse_uri(uri: str) -> SourceURI:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise BadSource(f"{uri!r}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        return SourceURI("s3", parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file":
        return SourceURI("file", "", str(Path(unquote(parsed.netloc + parsed.path)).resolve()))
    if parsed.scheme:
        raise BadSource(f"{uri!r}: unsupported scheme '{parsed.scheme}' (s3:// or file://)")
    return SourceURI("file", "", str(Path(uri).resolve()))


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


class LocalStore:
    """A directory as a store; the ETag is derived from size and modification time."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.uri = f"file://{self.root}"

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
        path = self._path(key)
        if not path.is_file():
            raise ObjectMissing(f"{self.uri}/{key} does not exist")
        return self._info(key, path)

    async def read_range(self, key: str, *, start: int, length: int, etag: str | None) -> bytes:
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
        path = self._path(key)
        return await asyncio.to_thread(FileRangeReader, path, f"{self.uri}/{key}", etag)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
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
        import shutil

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
        target = self._path(key)

        def write() -> ObjectInfo:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(data)
            partial.replace(target)
            return self._info(key, target)

        return await asyncio.to_thread(write)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)

    async def aclose(self) -> None:
        return None


class FileRangeReader:
    """``preadv`` from one open descriptor; the ETag is checked when opened and when closed."""

    def __init__(self, path: Path, where: str, etag: str | None) -> None:
        self.where = where
        self._path = path
        self._etag = etag
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectMissing(f"{where} does not exist") from None
        try:
            self._check()
        except BaseException:
            os.close(self._fd)
            raise

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
        done = 0
        while done < len(buffer):
            n = os.preadv(self._fd, [buffer[done:]], start + done)
            if n == 0:
                raise ObjectChanged(
                    f"{self.where}: wanted {len(buffer)} bytes at {start}, the file has fewer"
                )
            done += n

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self._check()  # replaced while we read: what we read may be a mix
        finally:
            os.close(self._fd)
            self._fd = -1


async def open_store(uri: str, *, concurrency: int = 16) -> ObjectStore:
    """A store for ``uri``; close it with ``await store.aclose()``."""
    source = parse_uri(uri)
    if source.scheme == "file":
        return LocalStore(source.prefix)
    from weight_cache.s3 import S3Store

    return await S3Store.open(source.bucket, source.prefix, concurrency=concurrency)
