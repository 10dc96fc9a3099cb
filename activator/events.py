"""The event log: one JSON line per transition and per request, for the cost report and replays.

The events are typed, and written and read through one codec (:mod:`contracts.events`: its
classes say each kind's fields). Every line has ``event`` (the kind), ``v`` (the schema
version), ``model``, ``ts`` (wall clock, Unix seconds) and ``mono`` (this process's monotonic
clock, for durations that a wall-clock step cannot skew). Kinds:

* ``state``: a model's state changed (``from``, ``to``);
* ``replica_starting`` / ``replica_ready`` (``replica``, ``cold_start_s`` and its ``phases``) /
  ``replica_failed`` (``reason``) / ``replica_stopped`` (``reason``, ``uptime_s``);
* ``request``: a request that reached the model's data path (it was relayed, or waited for a
  replica): its route (``endpoint``: ``infer``, ``metadata``, ``ready``, ``config``; ``version``,
  empty when its path named none), never its target or query; ``arrival``, ``start`` (handed to
  a replica; null if it never was), ``end`` (wall clock), ``status``, ``cold`` (it waited for a
  replica to start), ``queue_s``, ``replica``. Requests refused before that (401, 400, 404, 413,
  a full queue) are counted in the metrics, not logged one by one;
* ``prewarm``: a warm window began (``until``, ``source``), and ``warm_end``; ``policy``: a
  learned policy's decision; ``sleep`` / ``wake``: a group's member slept or woke (``level``);
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
time, decode each to its typed event, and skip (and count) every line that is not a
well-typed event.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import os
import threading
import time
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from io import FileIO
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import IO, TypeVar

from activator.usage import Usage
from contracts.events import VERSION, Event, Request, decode, encode

log = logging.getLogger("ember.activator")

FLUSH_S = 0.05
MAX_BYTES = 64 * 1024 * 1024  # the default bound of one file (ember.yaml: event_log_max_bytes)
KEEP = 4  # rotated files kept by default (ember.yaml: event_log_keep)
E = TypeVar("E", bound=Event)
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

    def emit(self, event: E) -> E:
        """Write ``event``, stamped now (``ts``, ``mono``); the stamped event."""
        stamped = dataclasses.replace(event, ts=time.time(), mono=time.monotonic())
        if self._writing:
            self._append(encode(stamped))
        return stamped

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
        tokens: Usage | None = None,
        ttft_s: float | None = None,
    ) -> None:
        """A ``request`` event, formatted without building one (one per request): the line
        :func:`contracts.events.encode` writes for its :class:`~contracts.events.Request`."""
        if not self._writing:
            return
        self._append(
            f'{{"event":"request","v":{VERSION},"model":{encode_basestring(model)},"ts":{end!r},'
            f'"mono":{time.monotonic()!r},"endpoint":{encode_basestring(endpoint)},'
            f'"version":{encode_basestring(version)},'
            f'"arrival":{arrival!r},"start":{"null" if start is None else repr(start)},'
            f'"end":{end!r},"status":{status},"cold":{"true" if cold else "false"},'
            f'"queue_s":{queue_s!r},"replica":{"null" if replica is None else replica}'
            + ("}\n" if tokens is None and ttft_s is None else _generation(tokens, ttft_s))
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


def iter_events(path: Path, skipped: Skipped) -> Iterator[Event]:
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
                    event = decode(line) if line is not None else None
                    if event is not None:
                        yield event
                    elif line is None or line.strip():
                        skipped.lines += 1
            except OSError as exc:  # a read error part way: what was read stands
                log.warning("event log %s: reading it failed (%s); the rest skipped", file, exc)
                skipped.unreadable.append(f"{file}: {exc.strerror or exc}")


def read_events(path: Path) -> list[Event]:
    """The events in a log (its rotated files too), skipping what is not an event."""
    return list(iter_events(path, Skipped()))


def _lines(f: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of ``f``; None for one over MAX_LINE_BYTES, read past without holding it."""
    while line := f.readline(MAX_LINE_BYTES):
        if len(line) < MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = f.readline(MAX_LINE_BYTES)
        yield None


def arrivals(
    events: Iterable[Event], models: Container[str], *, window: int = 4096
) -> Iterator[tuple[str, list[float]]]:
    """Each model's ``request`` arrivals (wall clock), in ascending batches per model.

    The log is in order of the requests' ends, not their arrivals: up to ``window`` arrivals
    per model are held and sorted before they are handed on, so memory is bounded however long
    the log (an arrival more than ``window`` requests out of order comes in a later batch).
    """
    held: dict[str, list[float]] = {}
    for e in events:
        model = e.model
        if not isinstance(e, Request) or model not in models:
            continue
        heap = held.setdefault(model, [])
        heapq.heappush(heap, float(e.ts if e.arrival is None else e.arrival))
        if len(heap) >= 2 * window:
            yield model, [heapq.heappop(heap) for _ in range(window)]
    for model, heap in held.items():
        if heap:
            yield model, sorted(heap)


def _generation(tokens: Usage | None, ttft_s: float | None) -> str:
    """The end of a ``request`` line that said its tokens (or its first event's time)."""
    out = []
    if tokens is not None:
        out.append(
            f',"prompt_tokens":{tokens.prompt_tokens},'
            f'"completion_tokens":{tokens.completion_tokens}'
        )
    if ttft_s is not None:
        out.append(f',"ttft_s":{ttft_s!r}')
    return "".join(out) + "}\n"
