"""The activator's names for where a replica and a model's pool are: one vocabulary each, used by
the pools, the groups, the metrics and the answers (string-valued, so a log line, a metric
label and a JSON answer say the same word)."""

from __future__ import annotations

import enum


class ReplicaState(enum.StrEnum):
    """One replica of a pool: starting, ready for requests, having its health checked after a
    failure (no new requests), or draining before it stops."""

    STARTING = "starting"
    READY = "ready"
    CHECKING = "checking"
    DRAINING = "draining"


class PoolState(enum.StrEnum):
    """A model's pool: no replica (``zero``), one starting, one ready, the last ones draining;
    ``unavailable``: a group's member that failed on every ready replica of its group."""

    ZERO = "zero"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    UNAVAILABLE = "unavailable"
