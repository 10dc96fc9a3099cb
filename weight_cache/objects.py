"""The seam between the cache and a store: what a store is, and what it hands back.

Keys are relative to the store's prefix, ``/``-separated. Reads name the ETag seen when the load
was planned, so an object replaced mid-load fails with
:class:`~weight_cache.errors.ObjectChanged` instead of mixing two versions.

A store is an async context manager: its client (and every reader it handed out) lives until the
``async with`` block ends. A holder that cannot scope it to one block enters it on an
:class:`contextlib.AsyncExitStack`, or calls :meth:`ObjectStore.aclose` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object's size and ETag (and key, in a listing)."""

    key: str
    size: int
    etag: str


def join_key(prefix: str, key: str) -> str:
    """Store keys joined with one ``/`` between them, empty parts left out."""
    return f"{prefix}/{key}" if prefix else key


class RangeReader(Protocol):
    """Blocking ranged reads of one object, safe to call from several threads at once.

    The hot path of a fetch: bytes land directly in the destination (the tier file's mapping),
    with no intermediate ``bytes`` objects and no event loop in between.
    """

    def read_into(self, start: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the object's bytes from ``start``; raise rather than fill less."""
        ...

    def close(self) -> None:
        """Let go of the reader's connections (a local file checks it was not replaced)."""


@runtime_checkable
class FileCopier(Protocol):
    """A reader whose object is a local file: it copies ranges into another file in the kernel.

    ``copy_file_range`` moves page-cache pages to page-cache pages with one copy and no user
    buffer; landing through a mapping of the tier file instead faults every page in (the kernel
    zero-fills each before the copy overwrites it), which costs more than the copy itself.
    """

    def copy_into(self, fd: int, start: int, length: int) -> None:
        """Copy ``length`` bytes from ``start`` of the object to the same offset of ``fd``;
        raise rather than copy less (an ``OSError`` of the target's is the caller's to name)."""


class ClosedOnExit:
    """Leaving ``async with`` calls :meth:`aclose` (normally or by an exception): the stores'
    one way out."""

    async def aclose(self) -> None:
        """Close what the store holds (its client, its open files)."""
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ObjectStore(Protocol):
    """What the cache needs from a store. ``uri`` names the prefix, for messages and cache keys.

    Use it as ``async with store:``; leaving the block (normally or by an exception) closes it.
    """

    uri: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None:
        """Release the client and the readers still open; calling it twice does nothing."""
        ...

    async def head(self, key: str) -> ObjectInfo:
        """The size and ETag of ``key``; ObjectMissing if it is not there."""

    async def read_range(self, key: str, *, start: int, length: int, etag: str | None) -> bytes:
        """Exactly ``length`` bytes from ``start``; raises rather than return fewer."""
        ...

    async def range_reader(self, key: str, *, etag: str | None) -> RangeReader:
        """A reader for the fetch threads: blocking ranged reads straight into caller memory.

        Close it when done; the store closes any still open when it closes.
        """
        ...

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under the store's prefix (or under ``prefix`` within it)."""

    async def put_file(
        self, key: str, path: Path, *, progress: Progress | None = None
    ) -> ObjectInfo:
        """Upload the file at ``path`` as ``key``; its ETag."""

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` as ``key``; its ETag."""

    async def delete(self, key: str) -> None:
        """Remove ``key`` (nothing if it is not there)."""
