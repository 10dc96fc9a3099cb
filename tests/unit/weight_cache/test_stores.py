"""``open_store`` picks the store by URI; a store is an async context manager, and leaving its
block, normally or by an exception, closes it: the S3 client, and a directory store's open files."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from weight_cache import local, s3
from weight_cache.errors import BadSource, ObjectChanged
from weight_cache.local import LocalStore
from weight_cache.s3 import S3Store
from weight_cache.stores import open_store


class Boom(Exception):
    """What leaves the block in the exception cases."""


def leaving(how: str) -> contextlib.AbstractContextManager[Any]:
    return pytest.raises(Boom) if how == "by-an-exception" else contextlib.nullcontext()


class FakeClient:
    def __init__(self) -> None:
        self.closed = False

    async def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        return {"ContentLength": 3, "ETag": f'"{Bucket}/{Key}"'}

    async def generate_presigned_url(self, op: str, **kwargs: Any) -> str:
        return "http://127.0.0.1:9/bucket/key?X-Amz-Signature=0"


class FakeSession:
    """Stands in for aiobotocore's session: each client closes when its context is left."""

    def __init__(self) -> None:
        self.clients: list[FakeClient] = []
        self.endpoints: list[str | None] = []

    def create_client(
        self, service: str, *, config: Any, endpoint_url: str | None
    ) -> contextlib.AbstractAsyncContextManager[FakeClient]:
        client = FakeClient()
        self.clients.append(client)
        self.endpoints.append(endpoint_url)

        @contextlib.asynccontextmanager
        async def lifetime() -> AsyncIterator[FakeClient]:
            try:
                yield client
            finally:
                client.closed = True

        return lifetime()


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> FakeSession:
    fake = FakeSession()
    monkeypatch.setattr(s3, "_session", lambda: fake)
    return fake


def fds_open_on(path: Path) -> int:
    """How many of this process's file descriptors point at ``path``."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the one iterdir itself used is gone by now
            count += Path(os.readlink(fd)) == path.resolve()
    return count


def test_open_store_picks_the_store_by_uri(tmp_path: Path, session: FakeSession) -> None:
    for uri in (f"file://{tmp_path}", str(tmp_path)):
        local = open_store(uri)
        assert isinstance(local, LocalStore) and local.root == tmp_path
    remote = open_store("s3://bucket/models/m", concurrency=4)
    assert isinstance(remote, S3Store)
    assert (remote.bucket, remote.prefix, remote.concurrency) == ("bucket", "models/m", 4)
    assert session.clients == []  # nothing connects before the block is entered
    with pytest.raises(BadSource):
        open_store("gs://bucket/m")


@pytest.mark.parametrize("how", ["normally", "by-an-exception"])
async def test_leaving_an_s3_store_closes_its_client(how: str, session: FakeSession) -> None:
    store = open_store("s3://bucket/m")
    with leaving(how):
        async with store as entered:
            assert entered is store
            assert (await store.head("k")).etag == '"bucket/m/k"'
            await store.range_reader("k", etag=None)
            (client,) = session.clients
            assert not client.closed
            if how == "by-an-exception":
                raise Boom
    assert client.closed
    with pytest.raises(RuntimeError, match="not open"):
        await store.head("k")
    await store.aclose()  # a second close does nothing


async def test_an_s3_store_is_used_inside_its_block_only(session: FakeSession) -> None:
    store = S3Store("bucket", "m", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="not open"):
        await store.head("k")
    async with store:
        with pytest.raises(RuntimeError, match="already open"):
            await store.__aenter__()
    assert session.endpoints == ["http://127.0.0.1:9"]
    assert all(c.closed for c in session.clients)


@pytest.mark.parametrize("how", ["normally", "by-an-exception"])
async def test_leaving_a_directory_store_releases_its_files(tmp_path: Path, how: str) -> None:
    (tmp_path / "a.bin").write_bytes(b"abcdef")
    (tmp_path / "b.bin").write_bytes(b"ghijkl")
    with leaving(how):
        async with open_store(f"file://{tmp_path}") as store:
            done = await store.range_reader("a.bin", etag=None)
            info = await store.head("b.bin")
            left = await store.range_reader("b.bin", etag=info.etag)
            buffer = bytearray(3)
            await asyncio.to_thread(left.read_into, 2, memoryview(buffer))
            assert buffer == b"ijk"
            done.close()
            # replaced behind the reader's back: closing the store still just lets go of it
            (tmp_path / "b.bin").write_bytes(b"other bytes")
            assert fds_open_on(tmp_path / "a.bin") == 0
            assert fds_open_on(tmp_path / "b.bin") == 1
            if how == "by-an-exception":
                raise Boom
    assert fds_open_on(tmp_path / "b.bin") == 0
    await store.aclose()  # a second close does nothing


@pytest.mark.parametrize("kernel", [True, False], ids=["copy_file_range", "by-hand"])
def test_a_directory_reader_copies_ranges_into_a_file_at_their_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: bool
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "w.bin").write_bytes(data)
    calls: list[int] = []
    real = os.copy_file_range

    def copy_file_range(src: int, dst: int, count: int, *args: Any) -> int:
        calls.append(count)
        if not kernel:  # another filesystem, or a kernel without it: copied through a buffer
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return int(real(src, dst, count, *args))

    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    monkeypatch.setattr(local, "_SCRATCH_BYTES", 1024 * 1024)  # several pieces by hand
    reader = local.FileRangeReader(tmp_path / "w.bin", "file:///w.bin", etag=None)
    fd = os.open(tmp_path / "copy.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(data))
        half = len(data) // 2
        reader.copy_into(fd, half, len(data) - half)  # out of order, as the threads land them
        reader.copy_into(fd, 0, half)
        with pytest.raises(ObjectChanged, match="the file has fewer"):
            reader.copy_into(fd, len(data) - 10, 20)
    finally:
        os.close(fd)
        reader.close()
    assert (tmp_path / "copy.bin").read_bytes() == data
    assert calls and (kernel or len(calls) == 1)  # refused once, then never asked again
