"""The Knative Service calls the activator makes, and nothing else.

GET and JSON merge PATCH of ``serving.knative.dev/v1`` ``services/{name}`` in one namespace
(what the RBAC ``ember deploy`` renders allows). The kubernetes client is blocking: its calls
run in threads, each with a timeout. Its exceptions are translated here, by type, into
:mod:`knative.errors`: :class:`ServiceNotFound` for a 404, :class:`KnativeApiError` (with the
HTTP status, None when the API could not be reached) for the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from knative.errors import DeployError, KnativeApiError, ServiceNotFound

GROUP, VERSION, PLURAL = "serving.knative.dev", "v1", "services"
MERGE_PATCH = "application/merge-patch+json"


def load_cluster_config(kubeconfig: str | None = None) -> None:
    """Point the kubernetes client at the cluster: in a pod, its service account; elsewhere
    ``kubeconfig`` or ``$KUBECONFIG``. :class:`DeployError` if there is none, or if the
    kubernetes client is not installed."""
    try:
        from kubernetes import config
    except ImportError as exc:
        if not (exc.name or "").startswith("kubernetes"):
            raise
        raise DeployError(
            "talking to a cluster needs the kubernetes client: pip install 'ember[activator]'"
        ) from None

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        try:
            config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            raise DeployError(f"no Kubernetes cluster configured: {exc}") from None


class KnativeClient:
    """Knative Services of one namespace, through a kubernetes ``CustomObjectsApi``."""

    def __init__(self, namespace: str, api: Any, *, timeout_s: float = 10.0) -> None:
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._api = api

    @classmethod
    def from_environment(cls, namespace: str, kubeconfig: str | None = None) -> KnativeClient:
        """In a pod: its service account; elsewhere: ``kubeconfig`` or ``$KUBECONFIG``."""
        load_cluster_config(kubeconfig)  # first: it says so if the client is not installed
        from kubernetes import client

        return cls(namespace, client.CustomObjectsApi())

    async def get_service(self, name: str) -> dict[str, Any]:
        """The Knative Service ``name``; :class:`ServiceNotFound` if there is none."""
        obj = await self._call(
            f"GET service {self.namespace}/{name}",
            self._api.get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
        )
        if not isinstance(obj, dict):
            raise KnativeApiError(f"GET service {self.namespace}/{name}: not an object")
        return obj

    async def patch_service(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge ``patch`` into the Knative Service ``name`` (RFC 7386); the result."""
        obj = await self._call(
            f"PATCH service {self.namespace}/{name}",
            self._api.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            patch,
            _content_type=MERGE_PATCH,
        )
        return obj if isinstance(obj, dict) else {}

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.to_thread(fn, *args, _request_timeout=self.timeout_s, **kw)
        except ApiException as exc:
            error = ServiceNotFound if exc.status == 404 else KnativeApiError
            reason = str(exc.reason or "")
            raise error(
                f"{what}: {exc.status} {reason}", status=exc.status, reason=reason
            ) from None
        except (HTTPError, OSError) as exc:  # refused, reset, timed out, TLS
            raise KnativeApiError(f"{what}: cannot reach the Kubernetes API: {exc}") from None
