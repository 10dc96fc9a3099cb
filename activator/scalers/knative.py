"""The Knative ``Scaler``: a model's replica is its Knative Service, woken through min-scale.

To wake a model the activator raises the ksvc's ``autoscaling.knative.dev/min-scale`` to 1 (a
merge patch of ``spec.template.metadata.annotations``; Knative rolls a revision that keeps a pod),
then watches it through the API (polling the ksvc: a ``Ready=False`` condition fails the start
with Knative's reason and message) and probes ``status.address.url`` + ``/v2/health/ready`` until
the model answers; requests go to that URL. Keep-alive expiry lowers min-scale back to 0 and
Knative's own autoscaler takes the pods away. The activator sees one "replica" per model: Knative
scales pods behind the URL (``max-scale``), so the pool gives it ``container_concurrency x
max_replicas`` slots.

API calls made, and nothing else: GET and PATCH ``serving.knative.dev/v1`` ``services/{name}`` in
one namespace (see the RBAC the deploy renders). Blocking kubernetes-client calls run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp

from activator.errors import ModelUnavailable
from activator.scalers.base import ReplicaHandle, probe_ready
from contracts.stack import ModelSpec

log = logging.getLogger("ember.activator")

GROUP, VERSION, PLURAL = "serving.knative.dev", "v1", "services"
MIN_SCALE = "autoscaling.knative.dev/min-scale"


class KnativeScaler:
    def __init__(self, namespace: str, api: Any = None, *, poll_s: float = 0.5) -> None:
        self.namespace = namespace
        self.poll_s = poll_s
        self._api = api
        self._raised: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls, namespace: str, kubeconfig: str | None = None) -> KnativeScaler:
        """In a pod: its service account; elsewhere: ``kubeconfig`` or ``$KUBECONFIG``."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        return cls(namespace, client.CustomObjectsApi())

    # ------------------------------------------------------------------ the API calls
    async def _get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            obj: dict[str, Any] = await asyncio.to_thread(
                self._api.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ModelUnavailable(
                f"Knative API: GET service {self.namespace}/{name}: {exc.status} {exc.reason}"
            ) from None
        return obj

    async def _set_min_scale(self, name: str, value: int) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {"spec": {"template": {"metadata": {"annotations": {MIN_SCALE: str(value)}}}}}
        try:
            await asyncio.to_thread(
                self._api.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                body,
            )
        except ApiException as exc:
            what = "not found (run `ember deploy`)" if exc.status == 404 else exc.reason
            raise ModelUnavailable(
                f"Knative API: PATCH service {self.namespace}/{name}: {exc.status} {what}"
            ) from None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._session

    # ------------------------------------------------------------------ the Scaler seam
    async def start(self, spec: ModelSpec) -> ReplicaHandle:
        started = time.perf_counter()
        await self._set_min_scale(spec.name, max(1, spec.min_replicas))
        self._raised.add(spec.name)
        ksvc = await self._get(spec.name)
        url = _url(ksvc) if ksvc else ""
        return ReplicaHandle(spec.name, url, {"wake_patch": time.perf_counter() - started})

    async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while True:
            ksvc = await self._get(handle.model)
            if ksvc is None:
                raise ModelUnavailable(
                    f"model '{handle.model}': Knative service {self.namespace}/{handle.model} "
                    "does not exist (run `ember deploy`)"
                )
            failed = _failed(ksvc)
            if failed:
                raise ModelUnavailable(f"model '{handle.model}': Knative says {failed}")
            handle.url = _url(ksvc) or handle.url
            if handle.url and await self.healthy(handle):
                handle.timings["until_ready"] = time.perf_counter() - started
                return
            if time.monotonic() > deadline:
                raise ModelUnavailable(
                    f"model '{handle.model}': its Knative service was not ready within "
                    f"{timeout_s:g}s"
                )
            await asyncio.sleep(self.poll_s)

    async def healthy(self, handle: ReplicaHandle) -> bool:
        return bool(handle.url) and await probe_ready(self._http(), handle.url)

    async def wait_exit(self, handle: ReplicaHandle) -> str:
        """Return when the service is gone or Knative reports it failed."""
        while True:
            await asyncio.sleep(self.poll_s * 4)
            try:
                ksvc = await self._get(handle.model)
            except ModelUnavailable as exc:  # the API itself failing is not the model's exit
                log.warning("%s", exc)
                continue
            if ksvc is None:
                return f"Knative service {self.namespace}/{handle.model} was deleted"
            failed = _failed(ksvc)
            if failed:
                return f"Knative says {failed}"

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        """Lower min-scale to 0; Knative drains and removes the pods itself."""
        await self._set_min_scale(handle.model, 0)
        self._raised.discard(handle.model)

    async def aclose(self) -> None:
        for name in list(self._raised):  # no pod kept warm by an activator that is gone
            with contextlib.suppress(ModelUnavailable):
                await self._set_min_scale(name, 0)
        self._raised.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _url(ksvc: dict[str, Any]) -> str:
    status = ksvc.get("status") or {}
    address = (status.get("address") or {}).get("url") or status.get("url") or ""
    return str(address).rstrip("/")


def _failed(ksvc: dict[str, Any]) -> str:
    """``Ready=False`` with its reason and message, or empty."""
    for condition in (ksvc.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "False":
            reason = condition.get("reason", "NotReady")
            message = condition.get("message", "")
            return f"{reason}: {message}" if message else str(reason)
    return ""
