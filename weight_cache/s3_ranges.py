"""The bulk reads of a fetch from S3: ranged GETs of one presigned URL, from the fetch's threads.

botocore presigns one GET URL per object (credentials, region, addressing style and endpoint all
resolved as for any other call) and the fetch threads send ranged GETs for it on kept-alive
``http.client`` connections, reading each body with ``readinto`` straight into the tier file's
mapping: one kernel copy per byte and nothing else. 5xx, 429, SlowDown, resets and timeouts are
retried with jittered backoff; a body cut short resumes where it stopped.

Every GET runs against a deadline (:class:`~weight_cache.limits.StoreLimits`): its share of the
minimum transfer rate, never past the range's own deadline. A socket timeout cannot do this (it
bounds each packet, and a trickle of them never trips it), so a :class:`Watchdog` thread shuts
the socket of a GET that outlives its deadline, and the read blocked on it returns. An attempt
cut off that way counts as a failure (its bytes are kept); a range that runs out of attempts or
of time fails with :class:`~weight_cache.errors.StoreTooSlow`.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import random
import re
import socket
import ssl
import threading
import time
from urllib.parse import urlsplit

from weight_cache.errors import (
    AccessDenied,
    ObjectChanged,
    ObjectMissing,
    StoreTooSlow,
    StoreUnavailable,
)
from weight_cache.limits import StoreLimits

_RETRY_STATUS = {429, 500, 502, 503, 504}


class Watchdog:
    """Shuts the socket of a request that outlived its deadline, so the thread reading it
    returns. One thread, started with the first request and stopped by :meth:`close`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, socket.socket]] = {}
        self._fired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, sock: socket.socket, deadline: float) -> int:
        """Watch ``sock`` until ``deadline`` (``time.monotonic()``); a token for :meth:`disarm`."""
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="ember-s3-deadlines", daemon=True
                )
                self._thread.start()
            token = next(self._tokens)
            self._armed[token] = (deadline, sock)
            self._cond.notify()
            return token

    def disarm(self, token: int) -> bool:
        """Stop watching; False if the deadline passed and the socket was shut."""
        with self._cond:
            self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return False
            return True

    def close(self) -> None:
        """Stop watching."""
        with self._cond:
            self._closed = True
            thread, self._thread = self._thread, None
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for token, (deadline, sock) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        with contextlib.suppress(OSError):  # already closed by its reader
                            sock.shutdown(socket.SHUT_RDWR)
                soonest = min((d for d, _ in self._armed.values()), default=None)
                self._cond.wait(None if soonest is None else max(0.0, soonest - now))


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
        limits: StoreLimits,
        watchdog: Watchdog,
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
        self._limits = limits
        self._watchdog = watchdog
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
        """Fill ``buffer`` with the object's bytes from ``offset`` (retried, bounded)."""
        want = len(buffer)
        done = 0
        failures = 0
        range_deadline = time.monotonic() + self._limits.range_deadline_s
        while done < want:
            deadline = min(range_deadline, time.monotonic() + self._limits.attempt_s(want - done))
            try:
                done += self._get(start + done, buffer[done:], deadline)
                continue
            except _TooSlow as slow:
                self._drop()
                done += slow.got
                failures += 1
                if done >= want:
                    return
                out_of_time = deadline >= range_deadline
                if out_of_time or failures >= self._attempts:
                    raise StoreTooSlow(
                        self._limits.too_slow(
                            self.where, start, want, attempts=failures, out_of_time=out_of_time
                        )
                    ) from None
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
            pause = backoff(failures - 1)
            if time.monotonic() + pause >= range_deadline:
                raise StoreTooSlow(
                    self._limits.too_slow(
                        self.where, start, want, attempts=failures, out_of_time=True
                    )
                )
            time.sleep(pause)

    def _get(self, start: int, buffer: memoryview, deadline: float) -> int:
        """One GET for ``buffer``'s range, cut off at ``deadline``; the bytes it got (all, or
        fewer when cut short)."""
        conn = self._connection()
        try:
            if conn.sock is None:
                conn.timeout = self._connect_timeout_s
                conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc
        assert conn.sock is not None
        token = self._watchdog.arm(conn.sock, deadline)
        got = 0
        try:
            response = self._request(conn, start, len(buffer))
            while got < len(buffer):
                n = response.readinto(buffer[got:])
                if not n:
                    break
                got += n
        except (OSError, http.client.HTTPException, _Retry) as exc:
            if not self._watchdog.disarm(token):
                raise _TooSlow(got) from exc
            if isinstance(exc, _Retry):
                raise
            if not got:
                raise _Retry(f"{type(exc).__name__}: {exc}") from exc
            self._drop()  # cut short: the next attempt resumes after what arrived
            return got
        except BaseException:
            self._watchdog.disarm(token)
            raise
        if not self._watchdog.disarm(token):
            self._drop()  # its socket was shut: not reusable
            if got < len(buffer):
                raise _TooSlow(got)
            return got
        if got < len(buffer):
            self._drop()
            if not got:
                raise _Retry("the body broke off before any bytes")
        elif response.will_close or not response.isclosed():
            self._drop()  # closing, or more body than asked for: not reusable
        return got

    def _request(
        self, conn: http.client.HTTPConnection, start: int, length: int
    ) -> http.client.HTTPResponse:
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        if self._etag is not None:
            headers["If-Match"] = self._etag
        try:
            conn.request("GET", self._target, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(self._read_timeout_s)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc
        if response.status != 206:
            body = response.read(64 * 1024)
            raise self._status_error(response.status, body, start)
        return response

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
        """Close the reader's connections."""
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()


class _Retry(Exception):
    """A failure worth another attempt: 5xx, throttling, a reset, a timeout."""


class _TooSlow(Exception):
    """The attempt outlived its deadline; ``got`` bytes arrived before it was cut off."""

    def __init__(self, got: int) -> None:
        super().__init__(f"cut off after {got} bytes")
        self.got = got


def _xml_code(body: bytes) -> str:
    match = re.search(rb"<Code>([^<]{1,64})</Code>", body)
    return match.group(1).decode("ascii", "replace") if match else ""


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (exponential, jittered)."""
    return float(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
