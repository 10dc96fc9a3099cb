"""S3 through aiobotocore: the standard credentials and ``AWS_ENDPOINT_URL``, retries, ETag pins.

botocore's own retries (standard mode) cover 5xx, throttling/SlowDown, timeouts before the
headers and failed connections; a body that breaks off mid-read (reset, read timeout) is retried
here, since botocore has already handed the response over by then. Errors leave this module as
:mod:`weight_cache.errors` types, translated by type at this boundary.

The bulk reads of a fetch take a leaner path, :class:`S3RangeReader`: botocore presigns one GET
URL per object (credentials, region, addressing style and endpoint all resolved as for any other
call) and the fetch threads send ranged GETs for it on kept-alive ``http.client`` connections,
reading each body with ``readinto`` straight into the tier file's mapping. Per byte that is one
kernel copy and nothing else; through aiohttp and botocore's response wrappers every chunk was
also copied into ``bytes`` objects and passed through the event loop, and the fetch cost twice
the CPU. The same retry rules apply (5xx, 429, SlowDown, resets, timeouts, with jittered
backoff; a body cut short resumes where it stopped), and the same errors come out.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import random
import re
import ssl
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from weight_cache.errors import (
    AccessDenied,
    ObjectChanged,
    ObjectMissing,
    StoreUnavailable,
    WeightCacheError,
)
from weight_cache.objects import ClosedOnExit, ObjectInfo, Progress, join_key

_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
PART_BYTES = 64 * 1024 * 1024  # multipart part size (S3 needs >= 5 MiB but the last)
BODY_ATTEMPTS = 4
PRESIGN_EXPIRY_S = 12 * 3600  # a load that outlives this gets 403s; no load should
_RETRY_STATUS = {429, 500, 502, 503, 504}


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
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self.concurrency = concurrency
        self.endpoint_url = endpoint_url
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_attempts = max_attempts
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
        for reader in list(self._readers):
            reader.close()
        self._readers.clear()
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
        client = self._client
        try:
            r = await client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise _translate(exc, f"{self.uri}/{key}") from exc
        return ObjectInfo(key, int(r["ContentLength"]), r["ETag"])

    async def read_range(self, key: str, *, start: int, length: int, etag: str | None) -> bytes:
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
        for attempt in range(BODY_ATTEMPTS):
            try:
                response = await client.get_object(**kwargs)
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

    async def range_reader(self, key: str, *, etag: str | None) -> S3RangeReader:
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
        )
        self._readers.add(reader)
        return reader

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        client = self._client
        base = self._key(prefix)
        if base and not base.endswith("/"):
            base += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[ObjectInfo] = []
        try:
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(obj["Key"][strip:], int(obj["Size"]), obj["ETag"]))
        except Exception as exc:
            raise _translate(exc, self.uri) from exc
        return out

    async def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        client = self._client
        try:
            r = await client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
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
        client = self._client
        try:
            await client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise _translate(exc, f"{self.uri}/{key}") from exc


class S3RangeReader:
    """Ranged GETs of one presigned object URL, from any number of threads.

    Each thread keeps its own connection (HTTP/1.1 keep-alive); a connection that failed is
    dropped and the next attempt opens a fresh one.
    """

    def __init__(
        self,
        url: str,
        where: str,
        *,
        etag: str | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_attempts: int,
    ) -> None:
        parts = urlsplit(url)
        self.where = where
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._etag = etag
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._attempts = max(1, max_attempts)
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._ssl = (
            ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE"))
            if self._https
            else None
        )

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._connect_timeout_s, context=self._ssl
                )
            else:
                conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._connect_timeout_s
                )
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn

    def _drop(self) -> None:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                self._open.discard(conn)

    def read_into(self, start: int, buffer: memoryview) -> None:
        want = len(buffer)
        done = 0
        failures = 0
        while done < want:
            try:
                done += self._get(start + done, buffer[done:])
                continue
            except _Retry as retry:
                self._drop()
                failures += 1
                if failures >= self._attempts:
                    raise StoreUnavailable(
                        f"{self.where}: {retry} (gave up after {failures} attempts)"
                    ) from retry.__cause__
            except BaseException:
                self._drop()
                raise
            time.sleep(_backoff(failures - 1))

    def _get(self, start: int, buffer: memoryview) -> int:
        """One GET for ``buffer``'s range; the bytes it got (all, or fewer when cut short)."""
        end = start + len(buffer) - 1
        headers = {"Range": f"bytes={start}-{end}"}
        if self._etag is not None:
            headers["If-Match"] = self._etag
        conn = self._connection()
        try:
            conn.timeout = self._connect_timeout_s
            conn.request("GET", self._target, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(self._read_timeout_s)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc
        if response.status != 206:
            body = response.read(64 * 1024)
            raise self._status_error(response.status, body, start)
        got = 0
        try:
            while got < len(buffer):
                n = response.readinto(buffer[got:])
                if not n:
                    break
                got += n
        except (OSError, http.client.HTTPException) as exc:
            if not got:
                raise _Retry(f"{type(exc).__name__}: {exc}") from exc
            self._drop()  # cut short: the next attempt resumes after what arrived
            return got
        if got < len(buffer):
            self._drop()
            if not got:
                raise _Retry("the body broke off before any bytes")
        elif response.will_close or not response.isclosed():
            self._drop()  # closing, or more body than asked for: not reusable
        return got

    def _status_error(self, status: int, body: bytes, start: int) -> Exception:
        code = _xml_code(body) or str(status)
        if status in _RETRY_STATUS or code in ("SlowDown", "RequestTimeout", "InternalError"):
            return _Retry(f"S3 error {code} ({status})")
        if status == 404:
            return ObjectMissing(f"{self.where}: not found ({code})")
        if status == 403:
            return AccessDenied(f"{self.where}: access denied ({code})")
        if status == 412:
            return ObjectChanged(
                f"{self.where} was replaced since the load was planned (ETag changed)"
            )
        if status == 416:
            return ObjectChanged(f"{self.where} is shorter than planned (no bytes at {start})")
        if status == 200:
            return StoreUnavailable(f"{self.where}: the endpoint ignored the Range header")
        return StoreUnavailable(f"{self.where}: S3 error {code} ({status})")

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()


class _Retry(Exception):
    """A failure worth another attempt: 5xx, throttling, a reset, a timeout."""


def _xml_code(body: bytes) -> str:
    match = re.search(rb"<Code>([^<]{1,64})</Code>", body)
    return match.group(1).decode("ascii", "replace") if match else ""


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
