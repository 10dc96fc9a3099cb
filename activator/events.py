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

Lines are appended with one ``write`` each (no fsync: the log is for reports, not a ledger), so
a crash loses at most the lines in the OS's hands, never half a line's meaning.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import IO, Any


class EventLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", buffering=1, encoding="utf-8")

    def emit(self, event: str, model: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "model": model, "ts": time.time(), "mono": time.monotonic()}
        record.update(fields)
        if self._file is not None:
            line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
            with self._lock:
                self._file.write(line)
        return record

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events in a log, skipping a torn last line."""
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
