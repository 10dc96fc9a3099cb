"""The activator's errors: one base with the HTTP status a caller gets, in the OIP error shape."""

from __future__ import annotations

import enum

from contracts import errors as contracts
from contracts.replica import FailureKind


class ActivatorError(Exception):
    """Base of every activator failure; ``status_code`` is what the caller gets."""

    status_code = 500
    retry_after_s: float | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()


class ConfigError(ActivatorError, contracts.ConfigError):
    """A setting the activator reads (a token file, a policy, a trace) is missing or invalid.

    A kind of :class:`contracts.errors.ConfigError` too, so one ``except`` takes both.
    """

    status_code = 400


class BadRequest(ActivatorError):
    status_code = 400

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param  # the body field at fault, where one is (OpenAI's errors name it)


class UnknownModel(ActivatorError):
    status_code = 404


class NotFound(ActivatorError):
    status_code = 404


class MethodNotAllowed(ActivatorError):
    status_code = 405


class Unauthorized(ActivatorError):
    status_code = 401
    headers = ((b"www-authenticate", b'Bearer realm="ember"'),)


class PayloadTooLarge(ActivatorError):
    status_code = 413


class HeadersTooLarge(ActivatorError):
    status_code = 431


class RequestTimeout(ActivatorError):
    """A client stopped sending its request's head or body before it was whole."""

    status_code = 408


class Overloaded(ActivatorError):
    """The front door holds as many request bodies as it may (``max_buffered_bytes``)."""

    status_code = 503
    retry_after_s = 1.0


class QueueFull(ActivatorError):
    """The model's queue is at its bound: come back later."""

    status_code = 503
    retry_after_s = 1.0


class ModelUnavailable(ActivatorError):
    """The model could not be started (its replica failed); the reason says why."""

    status_code = 503
    retry_after_s = 5.0


class ShuttingDown(ActivatorError):
    status_code = 503
    retry_after_s = 1.0


class DeadlineExceeded(ActivatorError):
    """The request's deadline passed while it waited for a replica."""

    status_code = 504


class ReplicaFailed(ActivatorError):
    """The replica serving the request went away (crashed, killed) before it answered."""

    status_code = 502


class StartFailure(enum.Enum):
    """How a replica's start failed: the pool's answer to its waiters depends on it."""

    EXITED = "exited"  # the process (or container) went away before it was ready
    NOT_LISTENING = "not_listening"  # it never announced an address
    LOAD_FAILED = "load_failed"  # it said its model cannot load (the reason says why)
    TIMED_OUT = "timed_out"  # not ready within startup_timeout_s
    PLATFORM = "platform"  # the platform refused (Knative says Ready=False, the API failed)
    CONTRACT_VIOLATION = "contract_violation"  # it wrote a status line that is not the contract's


class ReplicaStartFailed(ModelUnavailable):
    """A replica could not be started; ``kind`` says how, ``failure`` what the replica said."""

    def __init__(
        self, message: str, kind: StartFailure, failure: FailureKind | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.failure = failure
