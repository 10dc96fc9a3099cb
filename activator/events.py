"""The event log: one JSON line per transition and per request, for the cost report and replays.

Every event has ``event``, ``model``, ``ts`` (wall clock, Unix seconds) and ``mono`` (this
process's monotonic clock, for durations that a wall-clock step cannot skew). Kinds:

* ``state``: a model's state changed (``from``, ``to``, ``reason``);
* ``replica_starting`` / ``replica_ready`` (``replica``, ``cold_start_s`` and its ``phases``) /
  ``replica_failed`` (``reason``) / ``replica_stopped`` (``reason``, ``uptime_s``);
* ``request``: a request that reached the model's data path (it was relayed, or waited for a
  replica): its route (``endpoint``: ``infer``, ``metadata``, ``ready``, ``config``; ``version``,
  empty when its path named none), never its target or query; ``arrival``, ``start`` (handed to
  a replica; null if it never was), ``end`` (wall clock), ``status``, ``cold`` (it waited for a
  replica to start), ``queue_s``, ``replica``. Requests refused before that (401, 400, 404, 413,
  a full queue) are counted in the metrics, not logged one by one;
* ``prewarm``: a warm window began (``until``, ``source``), and ``sleep``;
* ``activator_start`` (``run``, ``pid``) / ``activator_stop`` (``run``): a run of the activator
  began / ended cleanly (its replicas stopped first). Their ``model`` is empty. A start with no
  stop before it says the run before ended without one (a crash, SIGKILL): what that run left
  open ends at its last event (the cost report bills it so).

Inside an event loop, lines are gathered and written together every 50 ms (one ``write`` per
batch; a request's line costs a few microseconds, not a syscall); ``close`` writes the rest.
Nothing is fsynced: the log is for reports, not a ledger, so a crash loses at most the last
50 ms of lines, never half a line's meaning: a log that does not end in a newline when it is
opened (a torn last line) gets one first, so the torn line is skipped when read and the next
event is not.

The log is bounded: past ``max_bytes`` the file is rotated (``events.jsonl`` becomes
``events.jsonl.1``, ``.1`` becomes ``.2``, ...; ``keep`` rotated files are kept, older ones
removed). Readers (:func:`iter_events`) read the rotated files too, oldest first, one line at a
time, and skip (and count) every line that is not a well-typed event.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from io import FileIO
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("ember.activator")

FLUSH_S = 0.05
MAX_BYTES = 64 * 1024 * 1024  # the default bound of one file (ember.yaml: event_log_max_bytes)
KEEP = 4  # rotated files kept by default (ember.yaml: event_log_keep)
MAX_LINE_BYTES = 1 << 20  # a line longer than this is none of ours: skipped without holding it


class EventLogUnwritable(Exception):
    """The event log cannot be opened for appending (a read-only or missing place)."""


class EventLog:
    """Appends events to ``path`` (None: nowhere), rotating it past ``max_bytes``."""

    def __init__(self, path: Path | None, *, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._file: FileIO | None = None  # unbuffered: lines are gathered here, written at once
        self._size = 0
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._flushing: asyncio.TimerHandle | None = None
        # the last write failed (said once, until one succeeds), perhaps half done: the next
        # one starts on a new line
        self._failing = False
        self._writing = path is not None  # until closed
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._open(path)
            except OSError as exc:
                raise EventLogUnwritable(
                    f"cannot write the event log {path}: {exc.strerror or exc}; set "
                    "activator.events to a writable path (or null: no log)"
                ) from exc

    def _open(self, path: Path) -> None:
        self._file = path.open("ab", buffering=0)
        self._size = os.fstat(self._file.fileno()).st_size
        if self._size and not _ends_in_newline(path):
            self._put(b"\n")  # the torn line ends here; the next event is whole

    def _put(self, data: bytes) -> None:
        assert self._file is not None
        view = memoryview(data)
        while view:
            view = view[self._file.write(view) :]
        self._size += len(data)

    def emit(self, event: str, model: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "model": model, "ts": time.time(), "mono": time.monotonic()}
        record.update(fields)
        if self._writing:
            self._append(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        return record

    def request(
        self,
        model: str,
        *,
        endpoint: str,
        version: str,
        arrival: float,
        start: float | None,
        end: float,
        status: int,
        cold: bool,
        queue_s: float,
        replica: int | None,
    ) -> None:
        """A ``request`` event, formatted without building a dict (one per request)."""
        if not self._writing:
            return
        self._append(
            f'{{"event":"request","model":{encode_basestring(model)},"ts":{end!r},'
            f'"mono":{time.monotonic()!r},"endpoint":{encode_basestring(endpoint)},'
            f'"version":{encode_basestring(version)},'
            f'"arrival":{arrival!r},"start":{"null" if start is None else repr(start)},'
            f'"end":{end!r},"status":{status},"cold":{"true" if cold else "false"},'
            f'"queue_s":{queue_s!r},"replica":{"null" if replica is None else replica}}}\n'
        )

    def _append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            if self._flushing is not None:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: write now
                self._write()
                return
            self._flushing = loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        self._flushing = None
        lines, self._lines = self._lines, []
        if not lines or not self._writing or self.path is None:
            return
        data = (("\n" if self._failing else "") + "".join(lines)).encode()
        try:
            if self._file is None:  # a rotation failed half-way (no descriptor, no room)
                self._open(self.path)
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate(self.path)
            self._put(data)
        except OSError as exc:  # a full disk, no descriptor: these lines are lost; the next
            # batch tries again, reopening the file if the failure left it closed
            if not self._failing:
                log.warning("event log %s: cannot write (%s); events are lost", self.path, exc)
            self._failing = True
            return
        self._failing = False

    def _rotate(self, path: Path) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        rotate(path, self.keep)
        self._open(path)

    def close(self) -> None:
        with self._lock:
            if self._flushing is not None:
                self._flushing.cancel()
            self._write()
            self._writing = False
            if self._file is not None:
                self._file.close()
                self._file = None


def _ends_in_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def rotated(path: Path) -> list[tuple[int, Path]]:
    """The rotated files of the log at ``path`` (``NAME.1``, ``NAME.2``, ...), by number."""
    prefix = path.name + "."
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in path.parent.iterdir():
            number = entry.name.removeprefix(prefix)
            if entry.name.startswith(prefix) and number.isdigit() and number.isascii():
                found.append((int(number), entry))
    return sorted(found)


def rotate(path: Path, keep: int) -> None:
    """``path`` becomes ``path.1``, ``.1`` becomes ``.2``, ...; past ``keep`` they go."""
    for number, old in reversed(rotated(path)):
        if number >= keep:
            old.unlink(missing_ok=True)
        else:
            old.replace(path.with_name(f"{path.name}.{number + 1}"))
    if keep:
        path.replace(path.with_name(f"{path.name}.1"))
    else:
        path.unlink(missing_ok=True)


def log_files(path: Path) -> list[Path]:
    """The files of the log at ``path``, oldest first: its rotated files, then itself."""
    files = [p for _, p in reversed(rotated(path))]
    return [*files, path] if path.exists() else files


# ---------------------------------------------------------------------- reading


@dataclass
class Skipped:
    """Lines a reading skipped: not JSON (a torn line), or not a well-typed event; and files
    it could not read (or not to their end)."""

    lines: int = 0
    unreadable: list[str] = field(default_factory=list)  # "FILE: why", each file not read whole


def iter_events(path: Path, skipped: Skipped) -> Iterator[dict[str, Any]]:
    """The events of the log at ``path`` (rotated files first, oldest first), one line in
    memory at a time; every line that is not a well-typed event is counted in ``skipped``."""
    for file in log_files(path):
        try:
            f = file.open("rb")
        except FileNotFoundError:  # rotated away while we read the others
            continue
        except OSError as exc:  # unreadable: the log is never a reason not to start
            log.warning("event log %s: cannot read it (%s); skipped", file, exc)
            skipped.unreadable.append(f"{file}: {exc.strerror or exc}")
            continue
        with f:
            try:
                for line in _lines(f):
                    event = parse_event(line) if line is not None else None
                    if event is not None:
                        yield event
                    elif line is None or line.strip():
                        skipped.lines += 1
            except OSError as exc:  # a read error part way: what was read stands
                log.warning("event log %s: reading it failed (%s); the rest skipped", file, exc)
                skipped.unreadable.append(f"{file}: {exc.strerror or exc}")


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events in a log (its rotated files too), skipping what is not an event."""
    return list(iter_events(path, Skipped()))


def parse_event(line: bytes | str) -> dict[str, Any] | None:
    """The event on one line, or None: not JSON, or not an event with fields of their types."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return event if _well_typed(event) else None


def _lines(f: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of ``f``; None for one over MAX_LINE_BYTES, read past without holding it."""
    while line := f.readline(MAX_LINE_BYTES):
        if len(line) < MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = f.readline(MAX_LINE_BYTES)
        yield None


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


# the fields readers use, with their types: checked where present (those in _REQUIRED must be)
_FIELDS: dict[str, Callable[[Any], bool]] = {
    "event": _text,
    "model": _text,
    "ts": _number,
    "mono": _number,
    "replica": _or_null(_integer),
    "group": _or_null(_text),
    "level": _or_null(_text),
    "until": _or_null(_number),
    "wake_s": _or_null(_number),
    "gpu_type": _or_null(_text),
    "device": _or_null(_text),
    "price_per_hour": _or_null(_number),
    "cpus": _or_null(_number),
}
_REQUEST_FIELDS: dict[str, Callable[[Any], bool]] = {
    "endpoint": _text,
    "version": _text,
    "arrival": _or_null(_number),
    "start": _or_null(_number),
    "end": _number,
    "status": _integer,
    "cold": _flag,
    "queue_s": _or_null(_number),
}
_REQUEST_ALL = {**_FIELDS, **_REQUEST_FIELDS}
_REQUIRED: dict[str, tuple[str, ...]] = {"replica_starting": ("replica",)}


def _well_typed(event: Any) -> bool:
    if not isinstance(event, dict) or not all(k in event for k in ("event", "model", "ts")):
        return False
    kind = event["event"]
    fields = _REQUEST_ALL if kind == "request" else _FIELDS
    if not all(check(event[k]) for k, check in fields.items() if k in event):
        return False
    if kind == "request" and event.get("start") is not None and "end" not in event:
        return False  # busy from start to end: the end must be known
    return all(k in event for k in _REQUIRED.get(kind, ()))


def arrivals(
    events: Iterable[dict[str, Any]], models: Container[str], *, window: int = 4096
) -> Iterator[tuple[str, list[float]]]:
    """Each model's ``request`` arrivals (wall clock), in ascending batches per model.

    The log is in order of the requests' ends, not their arrivals: up to ``window`` arrivals
    per model are held and sorted before they are handed on, so memory is bounded however long
    the log (an arrival more than ``window`` requests out of order comes in a later batch).
    """
    held: dict[str, list[float]] = {}
    for e in events:
        model = e["model"]
        if e["event"] != "request" or model not in models:
            continue
        heap = held.setdefault(model, [])
        arrival = e.get("arrival")
        heapq.heappush(heap, float(e["ts"] if arrival is None else arrival))
        if len(heap) >= 2 * window:
            yield model, [heapq.heappop(heap) for _ in range(window)]
    for model, heap in held.items():
        if heap:
            yield model, sorted(heap)
