"""The event log: one JSON line per transition and per request, for the cost report and replays.

Every event has ``event``, ``model``, ``ts`` (wall clock, Unix seconds) and ``mono`` (this
process's monotonic clock, for durations that a wall-clock step cannot skew). Kinds:

* ``state``: a model's state changed (``from``, ``to``, ``reason``);
* ``replica_starting`` / ``replica_ready`` (``replica``, ``cold_start_s`` and its ``phases``) /
  ``replica_failed`` (``reason``) / ``replica_stopped`` (``reason``, ``uptime_s``);
* ``request``: ``arrival``, ``start`` (handed to a replica; null if it never was), ``end``
  (wall clock), ``status``, ``cold`` (it waited for a replica to start), ``queue_s``,
  ``replica``;
* ``prewarm``: a warm window began (``until``, ``source``), and ``sleep``.

Inside an event loop, lines are gathered and written together every 50 ms (one ``write`` per
batch; a request's line costs a few microseconds, not a syscall); ``close`` writes the rest.
Nothing is fsynced: the log is for reports, not a ledger, so a crash loses at most the last
50 ms of lines, never half a line's meaning (a torn last line is skipped when read).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import IO, Any

FLUSH_S = 0.05


class EventLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._flushing: asyncio.TimerHandle | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def emit(self, event: str, model: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "model": model, "ts": time.time(), "mono": time.monotonic()}
        record.update(fields)
        if self._file is not None:
            self._append(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        return record

    def request(
        self,
        model: str,
        path: str,
        arrival: float,
        start: float | None,
        end: float,
        status: int,
        cold: bool,
        queue_s: float,
        replica: int | None,
    ) -> None:
        """A ``request`` event, formatted without building a dict (one per request)."""
        if self._file is None:
            return
        self._append(
            f'{{"event":"request","model":{encode_basestring(model)},"ts":{end!r},'
            f'"mono":{time.monotonic()!r},"path":{encode_basestring(path)},'
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
        if self._lines and self._file is not None:
            self._file.write("".join(self._lines))
            self._file.flush()
        self._lines.clear()

    def close(self) -> None:
        with self._lock:
            if self._flushing is not None:
                self._flushing.cancel()
            self._write()
            if self._file is not None:
                self._file.close()
                self._file = None


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events in a log, skipping a torn last line."""
    with path.open(encoding="utf-8") as f:
        return parse_events(f)[0]


def parse_events(lines: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """The events among ``lines``, and how many lines were not events (a torn last line)."""
    events, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(event, dict) and "event" in event and "model" in event and "ts" in event:
            events.append(event)
        else:
            skipped += 1
    return events, skipped
