"""The Knative side's errors: one base with the HTTP status a server would answer."""

from __future__ import annotations


class DeployError(Exception):
    """A config that cannot become valid Knative/Kubernetes objects; the message says why."""

    status_code = 400
