"""A replica's failed start, read by type: what the event log records and what its waiters get.

The scalers raise :class:`~activator.errors.ReplicaStartFailed` with a ``kind``; the pool answers
the requests waiting for that start with 504 when it timed out and 503 (with the reason)
otherwise. Anything else a start raises (a bug, an OSError) is a 503 too.
"""

from __future__ import annotations

from dataclasses import dataclass

from activator.errors import (
    ActivatorError,
    DeadlineExceeded,
    ModelUnavailable,
    ReplicaStartFailed,
    StartFailure,
)
from contracts.events import ReplicaFailed
from contracts.replica import FailureKind


@dataclass(frozen=True)
class FailedStart:
    """Why a start failed, read from the exception by type (never from its message)."""

    reason: str
    kind: StartFailure | None = None  # None: not a ReplicaStartFailed (a bug, an OSError)
    failure: FailureKind | None = None  # what the replica said, when it said

    @classmethod
    def of(cls, exc: Exception) -> FailedStart:
        if isinstance(exc, ReplicaStartFailed):
            return cls(str(exc), exc.kind, exc.failure)
        if isinstance(exc, ActivatorError):
            return cls(str(exc))
        return cls(f"{type(exc).__name__}: {exc}")

    def error(self, model: str) -> ActivatorError:
        """What the start's waiters get: 504 when it timed out, else 503 with the reason."""
        if self.kind is StartFailure.TIMED_OUT:
            return DeadlineExceeded(f"model '{model}': {self.reason}")
        return ModelUnavailable(f"model '{model}' could not start: {self.reason}")

    def event(self, model: str, replica: int) -> ReplicaFailed:
        """The ``replica_failed`` event: the reason, the kind, the replica's failure."""
        return ReplicaFailed(
            model=model,
            replica=replica,
            reason=self.reason,
            failure_kind=None if self.kind is None else self.kind.value,
            failure=None if self.failure is None else self.failure.value,
        )
