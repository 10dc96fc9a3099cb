"""A failed start is read by type: a timeout is a 504 for its waiters, anything else a 503."""

from __future__ import annotations

import pytest

from activator.errors import (
    DeadlineExceeded,
    ModelUnavailable,
    ReplicaStartFailed,
    StartFailure,
)
from activator.pool.failures import FailedStart
from contracts.events import ReplicaFailed
from contracts.replica import FailureKind


def test_a_start_that_timed_out_is_a_504_with_the_reason() -> None:
    failed = FailedStart.of(ReplicaStartFailed("not ready within 3s", StartFailure.TIMED_OUT))
    error = failed.error("m")
    assert type(error) is DeadlineExceeded and error.status_code == 504
    assert str(error) == "model 'm': not ready within 3s"
    assert failed.event("m", 1) == ReplicaFailed(
        model="m", replica=1, reason="not ready within 3s", failure_kind="timed_out"
    )


@pytest.mark.parametrize("kind", [k for k in StartFailure if k is not StartFailure.TIMED_OUT])
def test_every_other_kind_is_a_503_with_the_reason(kind: StartFailure) -> None:
    failed = FailedStart.of(ReplicaStartFailed("it went wrong", kind))
    error = failed.error("m")
    assert type(error) is ModelUnavailable and error.status_code == 503
    assert str(error) == "model 'm' could not start: it went wrong"
    assert failed.event("m", 1).failure_kind == kind.value


def test_the_replicas_own_failure_is_carried() -> None:
    exc = ReplicaStartFailed("bad", StartFailure.LOAD_FAILED, FailureKind.OUT_OF_MEMORY)
    assert FailedStart.of(exc).event("m", 1) == ReplicaFailed(
        model="m", replica=1, reason="bad", failure_kind="load_failed", failure="out_of_memory"
    )


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ModelUnavailable("its replica was not ready within 3s"), "its replica was not ready"),
        (OSError(24, "Too many open files"), "OSError: [Errno 24] Too many open files"),
        (RuntimeError("a bug"), "RuntimeError: a bug"),
    ],
)
def test_an_untyped_failure_is_a_503_whatever_it_says(exc: Exception, reason: str) -> None:
    failed = FailedStart.of(exc)
    assert failed.kind is None and reason in failed.reason
    assert type(failed.error("m")) is ModelUnavailable
    assert failed.event("m", 1).failure_kind is None
