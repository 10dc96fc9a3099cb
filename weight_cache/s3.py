"""S3 through aiobotocore: the standard credentials and ``AWS_ENDPOINT_URL``, retries, ETag pins.

botocore's own retries (standard mode) cover 5xx, throttling/SlowDown, timeouts before the
headers and failed connections; a body that breaks off mid-read (reset, read timeout) is retried
here, since botocore has already handed the response over by then. Errors leave this module as
:mod:`weight_cache.errors` types, translated by type at this boundary.

The bulk reads of a fetch take a leaner path, :class:`~weight_cache.s3_ranges.S3RangeReader`:
botocore presigns one GET URL per object and the fetch threads send ranged GETs for it on
kept-alive ``http.client`` connections, reading each body with ``readinto`` straight into the
tier file's mapping. Per byte that is one kernel copy and nothing else; through aiohttp and
botocore's response wrappers every chunk was also copied into ``bytes`` objects and passed
through the event loop, and the fetch cost twice the CPU. The same retry rules apply, and the
same errors come out.

Every ranged read, on either path, runs against the store's
:class:`~weight_cache.limits.StoreLimits` (a deadline per range, a minimum transfer rate), so an
endpoint that trickles fails the read with :class:`~weight_cache.errors.StoreTooSlow` instead of
holding it for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

from weight_cache.errors import (
    AccessDenied,
    ObjectChanged,
    ObjectMissing,
    StoreTooSlow,
    StoreUnavailable,
    WeightCacheError,
)
from weight_cache.limits import StoreLimits
from weight_cache.objects import ClosedOnExit, ObjectInfo, Progress, join_key
from weight_cache.s3_ranges import S3RangeReader, Watchdog, backoff

_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
PART_BYTES = 64 * 1024 * 1024  # multipart part size (S3 needs >= 5 MiB but the last)
BODY_ATTEMPTS = 4
PRESIGN_EXPIRY_S = 12 * 3600  # a load that outlives this gets 403s; no load should


_SESSION: Any = None


def _session() -> Any:
    """One botocore session per process: its loaded service models and resolved credentials
    are reused by every client (a fresh session costs ~0.1 s per client)."""
    global _SESSION
    if _SESSION is None:
        from aiobotocore.session import get_session

        _SESSION = get_session()
    return _SESSION


async def warm_session() -> None:
    """Build (and close) one S3 client, so the next one costs milliseconds. Sends nothing."""
    from aiobotocore.config import AioConfig

    with contextlib.suppress(Exception):  # no credentials here yet: the real client will say so
        async with _session().create_client(
            "s3", config=AioConfig(), endpoint_url="http://127.0.0.1:9"
        ):
            pass


class S3Store(ClosedOnExit):
    """One bucket prefix through one aiobotocore client, made when the store is entered.

    ``async with S3Store(bucket, prefix) as store:`` (or :func:`weight_cache.stores.open_store`);
    leaving the block closes the client and the connections of the readers still open.
    ``limits`` bound each ranged read; without them they come from the environment
    (:meth:`StoreLimits.from_env`).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        concurrency: int = 16,
        endpoint_url: str | None = None,
        connect_timeout_s: float = 10,
        read_timeout_s: float = 30,
        max_attempts: int = 5,
        limits: StoreLimits | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self.concurrency = concurrency
        self.endpoint_url = endpoint_url
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_attempts = max_attempts
        self.limits = limits if limits is not None else StoreLimits.from_env(os.environ)
        self._watchdog = Watchdog()
        self._open_client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._readers: weakref.WeakSet[S3RangeReader] = weakref.WeakSet()

    async def __aenter__(self) -> Self:
        if self._open_client is not None:
            raise RuntimeError(f"{self.uri}: the store is already open")
        from aiobotocore.config import AioConfig

        config = AioConfig(
            max_pool_connections=max(self.concurrency, 10),
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
        )
        try:
            self._open_client = await self._stack.enter_async_context(
                _session().create_client("s3", config=config, endpoint_url=self.endpoint_url)
            )
        except Exception as exc:
            await self._stack.aclose()
            raise _translate(exc, f"s3://{self.bucket}") from exc
        return self

    async def aclose(self) -> None:
        """Close the S3 client and the range readers' connections."""
        for reader in list(self._readers):
            reader.close()
        self._readers.clear()
        self._watchdog.close()
        self._watchdog = Watchdog()  # a store may be entered again
        self._open_client = None
        await self._stack.aclose()

    @property
    def _client(self) -> Any:
        """The open client. Taken before the ``try`` that translates errors: a store used while
        closed is a bug in the caller, not a failure of the store."""
        if self._open_client is None:
            raise RuntimeError(f"{self.uri}: the store is not open (use `async with`)")
        return self._open_client

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    async def head(self, key: str) -> ObjectInfo:
        """See :meth:`ObjectStore.head`."""
        client = self._client
        where = f"{self.uri}/{key}"
        try:
            async with self._within_deadline(f"{where}: HEAD"):
                r = await client.head_object(Bucket=self.bucket, Key=self._key(key))
        except StoreTooSlow:
            raise
        except Exception as exc:
            raise _translate(exc, where) from exc
        return ObjectInfo(key, int(r["ContentLength"]), r["ETag"])

    @contextlib.asynccontextmanager
    async def _within_deadline(self, what: str) -> AsyncIterator[None]:
        """A call without a body to rate (HEAD, a listing), bounded by the range deadline: an
        endpoint that trickles its headers never stalls a pull for ever."""
        deadline_s = self.limits.range_deadline_s
        try:
            async with asyncio.timeout(deadline_s):
                yield
        except TimeoutError:
            raise StoreTooSlow(f"{what} got no answer within {deadline_s:g} s") from None

    async def read_range(self, key: str, *, start: int, length: int, etag: str | None) -> bytes:
        """See :meth:`ObjectStore.read_range`."""
        client = self._client
        if length == 0:
            return b""
        where = f"{self.uri}/{key}"
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Range": f"bytes={start}-{start + length - 1}",
        }
        if etag is not None:
            kwargs["IfMatch"] = etag
        loop = asyncio.get_running_loop()
        range_deadline = loop.time() + self.limits.range_deadline_s
        for attempt in range(BODY_ATTEMPTS):
            last = attempt + 1 == BODY_ATTEMPTS
            allowance = min(self.limits.attempt_s(length), range_deadline - loop.time())
            try:
                async with asyncio.timeout(max(0.0, allowance)):
                    data = await self._get_object(client, kwargs, where, last=last)
            except TimeoutError:
                pause = backoff(attempt)
                out_of_time = loop.time() + pause >= range_deadline
                if last or out_of_time:
                    raise StoreTooSlow(
                        self.limits.too_slow(
                            where, start, length, attempts=attempt + 1, out_of_time=out_of_time
                        )
                    ) from None
                await asyncio.sleep(pause)
                continue
            if len(data) == length:
                return data
            if not last:  # a short body: the connection broke off
                await asyncio.sleep(backoff(attempt))
                continue
            raise ObjectChanged(f"{where}: wanted {length} bytes at {start}, got {len(data)}")
        raise AssertionError("unreachable")

    @staticmethod
    async def _get_object(client: Any, kwargs: dict[str, Any], where: str, *, last: bool) -> bytes:
        """One GET's body; empty when it broke off and another attempt may follow."""
        try:
            response = await client.get_object(**kwargs)
        except Exception as exc:
            raise _translate(exc, where) from exc  # botocore has retried what it should
        try:
            async with response["Body"] as body:
                data: bytes = await body.read()
        except Exception as exc:  # the body broke off: reset, read timeout, short payload
            error = _translate(exc, where)
            if isinstance(error, StoreUnavailable) and not last:
                return b""
            raise error from exc
        return data

    async def range_reader(self, key: str, *, etag: str | None) -> S3RangeReader:
        """See :meth:`ObjectStore.range_reader`."""
        client = self._client
        try:
            url = await client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=PRESIGN_EXPIRY_S,
            )
        except Exception as exc:
            raise _translate(exc, f"{self.uri}/{key}") from exc
        reader = S3RangeReader(
            url,
            f"{self.uri}/{key}",
            etag=etag,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            max_attempts=self.max_attempts,
            limits=self.limits,
            watchdog=self._watchdog,
        )
        self._readers.add(reader)
        return reader

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """See :meth:`ObjectStore.list`."""
        client = self._client
        base = self._key(prefix)
        if base and not base.endswith("/"):
            base += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[ObjectInfo] = []
        try:
            async with self._within_deadline(f"{self.uri}: listing {base or '/'}"):
                paginator = client.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                    for obj in page.get("Contents", []):
                        out.append(ObjectInfo(obj["Key"][strip:], int(obj["Size"]), obj["ETag"]))
        except StoreTooSlow:
            raise
        except Exception as exc:
            raise _translate(exc, self.uri) from exc
        return out

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """See :meth:`ObjectStore.put_bytes`."""
        client = self._client
        try:
            r = await client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise _translate(exc, f"{self.uri}/{key}") from exc
        return ObjectInfo(key, len(data), r["ETag"])

    async def put_file(
        self, key: str, path: Path, *, progress: Progress | None = None
    ) -> ObjectInfo:
        """See :meth:`ObjectStore.put_file`."""
        size = (await asyncio.to_thread(path.stat)).st_size
        if size <= PART_BYTES:
            data = await asyncio.to_thread(path.read_bytes)
            info = await self.put_bytes(key, data)
            if progress is not None:
                progress(size)
            return info
        return await self._multipart(key, path, size, progress)

    async def _multipart(
        self, key: str, path: Path, size: int, progress: Progress | None
    ) -> ObjectInfo:
        client = self._client
        where = f"{self.uri}/{key}"
        full_key = self._key(key)
        try:
            upload = await client.create_multipart_upload(Bucket=self.bucket, Key=full_key)
        except Exception as exc:
            raise _translate(exc, where) from exc
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            with path.open("rb") as f:
                number = 1
                while True:
                    chunk = await asyncio.to_thread(f.read, PART_BYTES)
                    if not chunk:
                        break
                    r = await client.upload_part(
                        Bucket=self.bucket,
                        Key=full_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                    )
                    parts.append({"PartNumber": number, "ETag": r["ETag"]})
                    if progress is not None:
                        progress(len(chunk))
                    number += 1
            r = await client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id
                )
            if isinstance(exc, Exception):
                raise _translate(exc, where) from exc
            raise
        return ObjectInfo(key, size, r["ETag"])

    async def delete(self, key: str) -> None:
        """See :meth:`ObjectStore.delete`."""
        client = self._client
        try:
            await client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise _translate(exc, f"{self.uri}/{key}") from exc


def _translate(exc: BaseException, where: str) -> WeightCacheError:
    """botocore/aiohttp errors -> ours, by type and error code."""
    if isinstance(exc, WeightCacheError):
        return exc
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = error.get("Message") or code
        if code == "NoSuchBucket":
            bucket = where.removeprefix("s3://").split("/", 1)[0]
            return ObjectMissing(
                f"{where}: the bucket {bucket!r} does not exist (NoSuchBucket); create it first "
                f"(aws s3 mb s3://{bucket}, or boto3's create_bucket), or check AWS_ENDPOINT_URL"
            )
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status == 404:
            return ObjectMissing(f"{where}: not found ({code or status})")
        if code in _DENIED or status == 403:
            return AccessDenied(f"{where}: access denied ({code or status}: {message})")
        if code == "PreconditionFailed" or status == 412:
            return ObjectChanged(f"{where} was replaced since the load was planned (ETag changed)")
        if code == "InvalidRange" or status == 416:
            return ObjectChanged(f"{where} is shorter than planned ({code})")
        return StoreUnavailable(f"{where}: S3 error {code or status}: {message}")
    if isinstance(exc, NoCredentialsError):
        return AccessDenied(
            f"{where}: no AWS credentials found (env, config files or instance role)"
        )
    if isinstance(exc, ReadTimeoutError | ResponseStreamingError | BotoConnectionError):
        return StoreUnavailable(f"{where}: {type(exc).__name__}: {exc}")
    if isinstance(exc, BotoCoreError):
        return StoreUnavailable(f"{where}: {exc}")
    if isinstance(exc, asyncio.TimeoutError | ConnectionError | OSError):
        return StoreUnavailable(f"{where}: {type(exc).__name__}: {exc}")
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientError):
            return StoreUnavailable(f"{where}: {type(exc).__name__}: {exc}")
    except ImportError:  # pragma: no cover - aiohttp comes with aiobotocore
        pass
    return WeightCacheError(f"{where}: unexpected {type(exc).__name__}: {exc}")
