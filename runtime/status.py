"""The replica's side of :mod:`contracts.replica`: its status channel, and why a load failed.

``ember serve --status-fd N`` writes one event per line to file descriptor ``N`` (a pipe the
activator reads); :class:`StatusChannel` is that writer, and without the flag it writes nothing.
:func:`failure_kind` names a failed load's :class:`~contracts.replica.FailureKind` from the
exception's type (and the types of its causes), never from its message.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator

import weight_cache as cache
from contracts.replica import FailureKind, ReplicaEvent, encode
from runtime.errors import ConfigError
from runtime.handlers.base import HandlerLoadError

log = logging.getLogger("ember.runtime")

# by type, most specific first: the first that matches an exception of the chain decides
_KINDS: tuple[tuple[type[BaseException], FailureKind], ...] = (
    (cache.ObjectMissing, FailureKind.WEIGHTS_MISSING),
    (cache.CorruptCheckpoint, FailureKind.WEIGHTS_CORRUPT),
    (cache.StoreUnavailable, FailureKind.STORE_UNAVAILABLE),
    (cache.AccessDenied, FailureKind.STORE_UNAVAILABLE),
    (cache.DiskFull, FailureKind.DISK_FULL),
    (cache.BadSource, FailureKind.BAD_CONFIG),
    (cache.BadSetting, FailureKind.BAD_CONFIG),
    (ConfigError, FailureKind.BAD_CONFIG),
)


class StatusChannel:
    """Writes :mod:`contracts.replica` events to the status file descriptor, if there is one.

    The writes are synchronous: a line is far smaller than a pipe's buffer and the activator
    drains the pipe as it comes, so a write does not wait. A reader that went away (the
    activator stopped) turns the channel off rather than failing the server.
    """

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        if fd is not None:
            os.set_inheritable(fd, False)  # for this process only, not for what it starts

    def send(self, event: ReplicaEvent) -> None:
        if self.fd is None:
            return
        data = memoryview(encode(event))
        with self._lock:
            try:
                while data:
                    data = data[os.write(self.fd, data) :]
            except OSError as exc:
                log.warning("the status channel (fd %d) is closed: %s", self.fd, exc)
                self.fd = None


def failure_kind(exc: BaseException) -> FailureKind:
    """Why a load failed, from the types of ``exc`` and of the exceptions that caused it."""
    chain = list(_chain(exc))
    if any(_out_of_memory(e) for e in chain):
        return FailureKind.OUT_OF_MEMORY
    for e in chain:
        if isinstance(e, HandlerLoadError) and e.failure is not None:
            return e.failure
        for kind_of, kind in _KINDS:
            if isinstance(e, kind_of):
                return kind
    return FailureKind.LOAD_FAILED


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | cache.DeviceMemoryFull):
        return True
    torch = sys.modules.get("torch")  # only a model that uses torch can run out of its memory
    oom = getattr(torch, "OutOfMemoryError", None)
    return isinstance(oom, type) and isinstance(exc, oom)
