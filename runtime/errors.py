"""The runtime's errors: one base class carrying the HTTP status, rendered as ``{"error": ...}``."""

from __future__ import annotations


class RuntimeServerError(Exception):
    """Base of every error the runtime reports to a caller."""

    status_code: int = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(RuntimeServerError):
    """The request is malformed: bad JSON, wrong datatype, a shape that does not match the data."""

    status_code = 400


class ModelNotFound(RuntimeServerError):
    status_code = 404

    def __init__(self, name: str, version: str | None = None) -> None:
        where = f"'{name}'" if version is None else f"'{name}' version '{version}'"
        super().__init__(f"model {where} is not in the repository")


class PayloadTooLarge(RuntimeServerError):
    """Refused, mostly before the body was read: the connection closes with the answer (what is
    still on its way could not be told from a next request)."""

    status_code = 413

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class ClientGone(RuntimeServerError):
    """The client closed its connection mid-request: 499, as nginx logs it; nobody reads it."""

    status_code = 499


class ModelNotReady(RuntimeServerError):
    """The model exists but cannot answer yet (loading, unloaded or failed)."""

    status_code = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ServerOverloaded(RuntimeServerError):
    """A bounded queue is full; the caller should retry later."""

    status_code = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ShuttingDown(RuntimeServerError):
    status_code = 503

    def __init__(self) -> None:
        super().__init__(
            "server is shutting down", headers={"Retry-After": "1", "Connection": "close"}
        )


class InferenceFailed(RuntimeServerError):
    """The model itself raised while computing: the server's fault, not the caller's."""

    status_code = 500


class ConfigError(Exception):
    """A model or server configuration is invalid; raised before anything starts."""
