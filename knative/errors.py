"""The Knative side's errors: one base with the HTTP status a server would answer."""

from __future__ import annotations


class DeployError(Exception):
    """Base of the Knative side's failures; alone, a config that cannot become valid
    Knative/Kubernetes objects (or a cluster that refused them). The message says why."""

    status_code = 400


class KnativeApiError(DeployError):
    """A Kubernetes API call failed; ``status`` is the API's HTTP status (None: unreachable)."""

    status_code = 502

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class ServiceNotFound(KnativeApiError):
    """The Knative Service is not there (not deployed, or another namespace)."""

    status_code = 404
