"""An S3 endpoint that trickles (one byte at a time) fails a ranged read with ``StoreTooSlow``
once it falls under the minimum transfer rate or outlives the range deadline, on both read
paths (the fetch threads' ranged GETs and the store's own ``read_range``), and a fetch through it
leaves nothing in the tier. A healthy endpoint keeps its kept-alive connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import make_model_dir
from tests.trickle import TrickleServer
from weight_cache.errors import StoreTooSlow, StoreUnavailable
from weight_cache.fetch import fetch_to_tier
from weight_cache.limits import StoreLimits
from weight_cache.local import LocalStore
from weight_cache.push import push_directory
from weight_cache.s3 import S3Store
from weight_cache.tier import LocalTier

BODY = bytes(range(256)) * 256  # 64 KiB
# a range of 4 KiB may take 0.2 s plus 4 KiB at 64 KiB/s: 0.26 s, against a trickle at 20 B/s
RATE = StoreLimits(range_deadline_s=60, min_rate_bytes_s=64 * 1024, grace_s=0.2)
DEADLINE = StoreLimits(range_deadline_s=0.8, min_rate_bytes_s=0)


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore signs (presigns) even for a loopback endpoint: it needs some credentials."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    with TrickleServer(BODY, interval_s=0.05) as server:
        yield server


@pytest.fixture
async def store(trickle: TrickleServer, request: pytest.FixtureRequest) -> AsyncIterator[S3Store]:
    limits = getattr(request, "param", RATE)
    async with S3Store("b", "m", endpoint_url=trickle.url, max_attempts=2, limits=limits) as s:
        yield s


async def read(store: S3Store, length: int) -> bytes:
    reader = await store.range_reader("k", etag=None)
    buffer = bytearray(length)
    try:
        await asyncio.to_thread(reader.read_into, 0, memoryview(buffer))
    finally:
        reader.close()
    return bytes(buffer)


async def test_a_trickle_under_the_minimum_rate_gives_up(
    store: S3Store, trickle: TrickleServer
) -> None:
    started = time.monotonic()
    with pytest.raises(StoreTooSlow, match="under the minimum transfer rate of 64 KiB/s") as info:
        await read(store, 4096)
    assert time.monotonic() - started < 10  # two attempts of ~0.26 s, not 200 s of trickle
    assert trickle.gets == 2 and "gave up after 2 attempts" in str(info.value)
    assert isinstance(info.value, StoreUnavailable) and info.value.status_code == 504
    assert "s3://b/m/k: bytes 0-4095" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("store", [DEADLINE], indirect=True)
async def test_a_range_past_its_deadline_gives_up(store: S3Store, trickle: TrickleServer) -> None:
    started = time.monotonic()
    with pytest.raises(StoreTooSlow, match=r"within the 0\.8 s range read deadline"):
        await read(store, 4096)
    assert time.monotonic() - started < 10
    assert trickle.gets == 1  # the deadline covers every attempt: none was left for another


@pytest.mark.parametrize("store", [RATE, DEADLINE], indirect=True, ids=["rate", "deadline"])
async def test_the_stores_own_reads_keep_the_same_limits(store: S3Store) -> None:
    """``read_range`` (manifests, ``ember cache verify``) goes through aiobotocore."""
    started = time.monotonic()
    with pytest.raises(StoreTooSlow, match="s3://b/m/k: bytes 0-4095"):
        await store.read_range("k", start=0, length=4096, etag=None)
    assert time.monotonic() - started < 15


async def test_a_head_or_a_listing_that_never_answers_gives_up_at_the_deadline() -> None:
    with TrickleServer(BODY, interval_s=0.05, stall_head=True) as stalled:
        async with S3Store("b", "m", endpoint_url=stalled.url, limits=DEADLINE) as store:
            started = time.monotonic()
            with pytest.raises(StoreTooSlow, match=r"s3://b/m/k: HEAD got no answer within 0\.8 s"):
                await store.head("k")
            assert time.monotonic() - started < 10  # not botocore's 30 s read timeout, retried


async def test_a_fetch_through_a_trickle_leaves_nothing(
    tmp_path: Path, store: S3Store, trickle: TrickleServer
) -> None:
    local = LocalStore(tmp_path / "bucket")
    manifest = await push_directory(local, make_model_dir(tmp_path / "src", mb=0.1))
    tier = LocalTier(tmp_path / "tier")
    with pytest.raises(StoreTooSlow):
        await fetch_to_tier(store, tier, manifest=manifest, concurrency=2)
    assert tier.entries() == [] and not list(tier.root.rglob("*.partial"))


async def test_a_healthy_endpoint_reads_on_kept_alive_connections() -> None:
    """The deadlines cut nothing short that arrives in time, and leave the connection usable."""
    with TrickleServer(BODY, interval_s=0) as fast:
        limits = StoreLimits(range_deadline_s=60, min_rate_bytes_s=1024 * 1024, grace_s=10)
        async with S3Store("b", "m", endpoint_url=fast.url, limits=limits) as store:
            reader = await store.range_reader("k", etag=None)
            buffer = bytearray(len(BODY))

            def in_ranges() -> None:  # one thread: the reader's one kept-alive connection
                for start in range(0, len(BODY), 8192):
                    reader.read_into(start, memoryview(buffer)[start : start + 8192])

            await asyncio.to_thread(in_ranges)
            reader.close()
            assert bytes(buffer) == BODY
            assert await store.read_range("k", start=10, length=20, etag=None) == BODY[10:30]
        assert fast.gets == len(BODY) // 8192 + 1
        assert len(fast.peers) == 2  # one connection for the reader's reads, one for botocore's
