"""The Knative ``Scaler``: a model's replica is its Knative Service, woken through min-scale.

To wake a model the activator raises the ksvc's ``autoscaling.knative.dev/min-scale`` to 1 (a
merge patch of ``spec.template.metadata.annotations``; Knative rolls a revision that keeps a pod),
then watches it: the ksvc through the API (a ``Ready=False`` condition fails the start with
Knative's reason and message), and, once the ksvc has a URL, the replica's own repository index
(``POST /v2/repository/index``): its model ``READY`` ends the wait, and a model whose load failed
(an entry with a ``failure``) ends it at once with the replica's reason, instead of waiting out
the startup timeout. ``SLEEPING`` counts as ready too: a sleeping model serves (a request wakes
it). A group's pool (a spec with ``members``) is its group's Knative Service, a generic replica
started with ``--load-on-demand``: it is ready when every member is ``READY`` or ``SLEEPING``, and
fails as a single model does when one member's load failed. Requests go to that URL. Keep-alive
expiry lowers min-scale back to 0 and Knative's own autoscaler takes the pods away. The activator
sees one "replica" per model (or group): Knative scales pods behind the URL (``max-scale``), so
the pool gives it ``container_concurrency x max_replicas`` slots.

A model another server serves (``engine: command``, rendered by :mod:`knative.engine`) speaks no
v2: its handle carries the model's ``health`` path, whose 200 (with the ksvc not failed) ends the
wait and is its health check; then, as ``ember serve`` does on one machine, the server's ``GET
/v1/models`` says the name it answers to (``served_as``, which the relay puts in its requests).
Its repository index is never read and it reports no statuses; its metadata is the activator's
own (:mod:`activator.metadata` learns none from it).

The Kubernetes API calls are :class:`knative.client.KnativeClient`'s; its errors become
:class:`~activator.errors.ReplicaStartFailed` (``PLATFORM``) here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from activator.errors import ModelUnavailable, ReplicaStartFailed, StartFailure
from activator.pool.clock import Clock, SystemClock
from activator.replica_client import ReplicaClient
from activator.scalers.base import ReplicaHandle, StatusReport
from contracts.engine import served_as
from contracts.replica import Failed, ModelStatus, Pending, Ready, readiness
from contracts.stack import ModelSpec
from knative.client import KnativeClient
from knative.errors import KnativeApiError, ServiceNotFound

log = logging.getLogger("ember.activator")

MIN_SCALE = "autoscaling.knative.dev/min-scale"
INDEX_TIMEOUT_S = 2.0  # Knative may hold a request for a pod that is not ready: ask again later
INDEX_POLL_S = 2.0  # how often a ready service's index is read for what its models do


class KnativeScaler:
    def __init__(
        self,
        client: KnativeClient,
        *,
        poll_s: float = 0.5,
        index_poll_s: float = INDEX_POLL_S,
        replica_client: ReplicaClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.clock: Clock = SystemClock() if clock is None else clock
        self.namespace = client.namespace
        self.poll_s, self.index_poll_s = poll_s, index_poll_s
        self.replica_client = replica_client or ReplicaClient()
        self._raised: set[str] = set()
        self._serves: dict[str, tuple[str, ...]] = {}  # a service's name: the models it serves

    @classmethod
    def from_environment(cls, namespace: str, kubeconfig: str | None = None) -> KnativeScaler:
        """In a pod: its service account; elsewhere: ``kubeconfig`` or ``$KUBECONFIG``."""
        return cls(KnativeClient.from_environment(namespace, kubeconfig))

    # ------------------------------------------------------------------ the API calls
    async def _get(self, name: str) -> dict[str, Any]:
        try:
            return await self.client.get_service(name)
        except KnativeApiError as exc:
            raise self._refused(name, exc) from None

    async def _set_min_scale(self, name: str, value: int) -> None:
        patch = {"spec": {"template": {"metadata": {"annotations": {MIN_SCALE: str(value)}}}}}
        try:
            await self.client.patch_service(name, patch)
        except KnativeApiError as exc:
            raise self._refused(name, exc) from None

    def _refused(self, name: str, exc: KnativeApiError) -> ReplicaStartFailed:
        if isinstance(exc, ServiceNotFound):
            message = f"Knative service {self.namespace}/{name} does not exist (run `ember deploy`)"
        else:
            message = f"Knative API: {exc}"
        return ReplicaStartFailed(message, StartFailure.PLATFORM)

    async def _index(self, handle: ReplicaHandle) -> dict[str, ModelStatus] | None:
        """The replica's repository index, by model; None if it cannot say yet."""
        index = await self.replica_client.index(handle.url, INDEX_TIMEOUT_S)
        return None if index is None else {status.model: status for status in index}

    # ------------------------------------------------------------------ the Scaler seam
    async def start(self, spec: ModelSpec) -> ReplicaHandle:
        started = time.perf_counter()
        await self._set_min_scale(spec.name, max(1, spec.min_replicas))
        self._raised.add(spec.name)
        self._serves[spec.name] = spec.members or (spec.name,)
        url = _url(await self._get(spec.name))
        timings = {"wake_patch": time.perf_counter() - started}
        # a command engine's readiness is its server's health path (it has no v2 routes)
        return ReplicaHandle(spec.name, url, timings, health=spec.health)

    async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        started = time.perf_counter()
        deadline = self.clock.monotonic() + timeout_s
        models = self._serves.get(handle.model, (handle.model,))
        group = models != (handle.model,)
        index: dict[str, ModelStatus] | None = None
        while True:
            ksvc = await self._get(handle.model)
            failed = _failed(ksvc)
            if failed:
                raise ReplicaStartFailed(f"Knative says {failed}", StartFailure.PLATFORM)
            handle.url = _url(ksvc) or handle.url
            if handle.health is not None:  # a command engine: its server's health path
                ready = await self._engine_ready(handle)
            else:
                answer = await self._index(handle) if handle.url else None
                if answer is not None:
                    index = answer  # the last answer, for a timeout's message
                ready = answer is not None and _ready(answer, models, group=group)
            if ready:
                handle.timings["until_ready"] = time.perf_counter() - started
                return
            if self.clock.monotonic() > deadline:
                pending = _pending(index or {}, models) if group else ""
                if handle.health is not None:
                    pending = f" (its engine's {handle.health} did not answer 200)"
                raise ReplicaStartFailed(
                    f"its Knative service was not ready within {timeout_s:g}s{pending}",
                    StartFailure.TIMED_OUT,
                )
            await self.clock.sleep(self.poll_s)

    async def _engine_ready(self, handle: ReplicaHandle) -> bool:
        """Whether a command engine's server answers its health path; once it does, the name it
        answers to (:func:`contracts.engine.served_as`), as ``ember serve`` asks it locally."""
        if not handle.url or not await self.replica_client.ready(handle.url, handle.health or ""):
            return False
        listed = await self.replica_client.served_models(handle.url)
        handle.served_as = served_as(handle.model, listed)
        return True

    async def healthy(self, handle: ReplicaHandle) -> bool:
        if not handle.url:
            return False
        if handle.health is not None:  # another server's (engine: command)
            return await self.replica_client.ready(handle.url, handle.health)
        return await self.replica_client.ready(handle.url)

    async def statuses(self, handle: ReplicaHandle) -> AsyncIterator[StatusReport]:
        """The service's repository index, read every ``index_poll_s``: all of it at first,
        then the models whose status changed. A command engine has no index: nothing."""
        if handle.health is not None:
            return
        last: dict[str, ModelStatus] | None = None
        while True:
            asked = time.monotonic()
            index = await self._index(handle) if handle.url else None
            if index is not None:
                if last is None:
                    yield StatusReport(tuple(index.values()), asked, first=True)
                else:
                    changed = tuple(s for name, s in index.items() if last.get(name) != s)
                    if changed:
                        yield StatusReport(changed, asked)
                last = index
            await self.clock.sleep(self.index_poll_s)

    async def wait_exit(self, handle: ReplicaHandle) -> str:
        """Return when the service is gone or Knative reports it failed."""
        while True:
            await self.clock.sleep(self.poll_s * 4)
            try:
                ksvc = await self.client.get_service(handle.model)
            except ServiceNotFound:
                return f"Knative service {self.namespace}/{handle.model} was deleted"
            except KnativeApiError as exc:  # the API itself failing is not the model's exit
                log.warning("Knative API: %s", exc)
                continue
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
        await self.replica_client.aclose()


def _ready(index: dict[str, ModelStatus], models: tuple[str, ...], *, group: bool) -> bool:
    """Whether the replica serves (:func:`contracts.replica.readiness`). :class:`ReplicaStartFailed`
    (``LOAD_FAILED``) at once when every one of its models failed; a group's member that failed
    answers its own requests with why while the others serve."""
    state = readiness(index, models)
    if isinstance(state, Failed):
        first = state.failed[0]
        raise ReplicaStartFailed(
            f"its replica cannot load any of its models: {state.reasons()}"
            if group
            else f"its replica cannot load it: {first.reason}",
            StartFailure.LOAD_FAILED,
            first.failure,
        )
    return isinstance(state, Ready)


def _pending(index: dict[str, ModelStatus], models: tuple[str, ...]) -> str:
    """The members a group's replica has not made ready, with their state."""
    state = readiness(index, models)
    if not isinstance(state, Pending):
        return ""
    waiting = [f"{n} ({s.state})" if s else f"{n} (not listed)" for n, s in state.waiting]
    return f" (waiting for {', '.join(waiting)})"


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
