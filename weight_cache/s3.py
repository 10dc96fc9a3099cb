"""S3 through aiobotocore: the standard credentials and ``AWS_ENDPOINT_URL``, retries, ETag pins.

botocore's own retries (standard mode) cover 5xx, throttling/SlowDown, timeouts before the
headers and failed connections; a body that breaks off mid-read (reset, read timeout) is retried
here, since botocore has already handed the response over by then. Errors leave this module as
:mod:`weight_cache.errors` types, translated by type at this boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

from weight_cache.errors import (
    AccessDenied,
    ObjectChanged,
    ObjectMissing,
    StoreUnavailable,
    WeightCacheError,
)
from weight_cache.stores import ObjectInfo, Progress, join_key

_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
PART_BYTES = 64 * 1024 * 1024  # multipart part size (S3 needs >= 5 MiB but the last)
BODY_ATTEMPTS = 4


class S3Store:
    def __init__(
        self, client: Any, stack: contextlib.AsyncExitStack, bucket: str, prefix: str
    ) -> None:
        self._client = client
        self._stack = stack
        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")

    @classmethod
    async def open(
        cls,
        bucket: str,
        prefix: str,
        *,
        concurrency: int = 16,
        endpoint_url: str | None = None,
        connect_timeout_s: float = 10,
        read_timeout_s: float = 30,
        max_attempts: int = 5,
    ) -> S3Store:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(
            max_pool_connections=max(concurrency, 10),
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                get_session().create_client("s3", config=config, endpoint_url=endpoint_url)
            )
        except Exception as exc:
            await stack.aclose()
            raise _translate(exc, f"s3://{bucket}") from exc
        return cls(client, stack, bucket, prefix)

    async def aclose(self) -> None:
        await self._stack.aclose()

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    async def head(self, key: str) -> ObjectInfo:
        try:
            r = await self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise _translate(exc, f"{self.uri}/{key}") from exc
        return ObjectInfo(key, int(r["ContentLength"]), r["ETag"])

    async def read_range(self, key: str, *, start: int, length: int, etag: str | None) -> bytes:
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
        for attempt in range(BODY_ATTEMPTS):
            try:
                response = await self._client.get_object(**kwargs)
            except Exception as exc:
                raise _translate(exc, where) from exc  # botocore has retried what it should
            try:
                async with response["Body"] as body:
                    data: bytes = await body.read()
            except Exception as exc:  # the body broke off: reset, read timeout, short payload
                error = _translate(exc, where)
                if isinstance(error, StoreUnavailable) and attempt + 1 < BODY_ATTEMPTS:
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise error from exc
            if len(data) == length:
                return data
            if attempt + 1 < BODY_ATTEMPTS:  # a short body: the connection broke off
                await asyncio.sleep(_backoff(attempt))
                continue
            raise ObjectChanged(f"{where}: wanted {length} bytes at {start}, got {len(data)}")
        raise AssertionError("unreachable")

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._key(prefix)
        if base and not base.endswith("/"):
            base += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[ObjectInfo] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(obj["Key"][strip:], int(obj["Size"]), obj["ETag"]))
        except Exception as exc:
            raise _translate(exc, self.uri) from exc
        return out

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        try:
            r = await self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise _translate(exc, f"{self.uri}/{key}") from exc
        return ObjectInfo(key, len(data), r["ETag"])

    async def put_file(
        self, key: str, path: Path, *, progress: Progress | None = None
    ) -> ObjectInfo:
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
        where = f"{self.uri}/{key}"
        full_key = self._key(key)
        try:
            upload = await self._client.create_multipart_upload(Bucket=self.bucket, Key=full_key)
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
                    r = await self._client.upload_part(
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
            r = await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id
                )
            if isinstance(exc, Exception):
                raise _translate(exc, where) from exc
            raise
        return ObjectInfo(key, size, r["ETag"])

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise _translate(exc, f"{self.uri}/{key}") from exc


def _backoff(attempt: int) -> float:
    return float(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))


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
