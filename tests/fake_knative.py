"""A loopback fake of exactly the Kubernetes API calls Ember makes.

Namespaced objects by path (``/api/v1/namespaces/NS/PLURAL/NAME`` and
``/apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME``): GET, DELETE, and PATCH as server-side apply
(``application/apply-patch+yaml``: create or update, ``metadata.generation`` counted) or JSON
merge patch (``application/merge-patch+json``, on an existing object). A small "controller"
plays Knative for ``serving.knative.dev/v1`` services: an applied service becomes Ready for its
generation (or fails, when told to); when a service's min-scale goes to 1 or more it starts a
backend (the test's real ``ember serve`` process) and reports its URL as
``status.address.url``; when min-scale goes back to 0 it stops the backend. A backend whose
container exits is reported (:meth:`FakeKnative.container_exited`) the way Knative's revision
reconciler words a terminated container: ``Ready=False``, reason ``ExitCode<N>``, message
``Container failed with: <its termination message>``. Every request is recorded. It binds
127.0.0.1 port 0 and stops with the test.

Without a backend, a woken service's "replica" is a stub on the fake's own port
(``/replicas/NAME``): its ``POST /v2/repository/index`` answers the entries the test put in
``index[NAME]`` (:func:`index_entry`), as a runtime replica does, and counts how often it was
asked (``index_reads``); its ``/v2/health/ready`` answers 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

MIN_SCALE = "autoscaling.knative.dev/min-scale"
KSVC_API = "serving.knative.dev/v1"
Backend = Callable[[str], tuple[str, Callable[[], None]]]  # name -> (url, stop)


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def index_entry(
    name: str, state: str, reason: str = "", failure: str | None = None
) -> dict[str, Any]:
    """One model of a replica's repository index, as ``ember serve`` words it."""
    entry: dict[str, Any] = {"name": name, "version": "1", "state": state, "reason": reason}
    if failure is not None:
        entry["failure"] = failure
    return entry


class FakeKnative:
    def __init__(self, backend: Backend | None = None) -> None:
        self.backend = backend or self.stub
        self.index: dict[str, list[dict[str, Any]]] = {}  # a stub replica's repository index
        self.index_reads: Counter[str] = Counter()
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.apply_failures: dict[str, tuple[str, str]] = {}
        self.settle_s = 0.2  # how long "Knative" takes to report an applied service
        self.requests: list[tuple[str, str, Any]] = []
        self.running: dict[str, Callable[[], None]] = {}
        self.failures: dict[str, tuple[str, str]] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ksvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((KSVC_API, "services", namespace, name))

    def add_service(self, namespace: str, name: str) -> None:
        self.objects[(KSVC_API, "services", namespace, name)] = {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"metadata": {"annotations": {MIN_SCALE: "0"}}}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    def stub(self, name: str) -> tuple[str, Callable[[], None]]:
        """The backend of a fake without one: the stub replica ``/replicas/NAME``."""
        return f"{self.url}/replicas/{name}", lambda: None

    def fail_on_wake(self, name: str, reason: str, message: str) -> None:
        self.failures[name] = (reason, message)

    def container_exited(self, namespace: str, name: str, exit_code: int, message: str) -> None:
        """What the kubelet and Knative make of a service's container exiting with ``exit_code``
        and ``message`` (its terminationMessagePath's text). Safe from any thread."""
        reason = f"ExitCode{exit_code}"
        text = f"Container failed with: {message}"

        def mark() -> None:
            obj = self.ksvc(namespace, name)
            if obj is not None:
                obj["status"]["conditions"] = [
                    {"type": t, "status": "False", "reason": reason, "message": text}
                    for t in ("ConfigurationsReady", "Ready")
                ] + [{"type": "RoutesReady", "status": "True"}]

        with contextlib.suppress(RuntimeError):  # the fake has already stopped
            self._loop.call_soon_threadsafe(mark)

    def fail_on_apply(self, name: str, reason: str, message: str) -> None:
        self.apply_failures[name] = (reason, message)

    def min_scales(self, name: str) -> list[str]:
        return [
            body["spec"]["template"]["metadata"]["annotations"][MIN_SCALE]
            for method, path, body in self.requests
            if method == "PATCH" and path.endswith(f"/{name}")
        ]

    def start(self) -> FakeKnative:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        for stop in self.running.values():
            stop()
        self.running.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        for path in (
            "/api/{version}/namespaces/{ns}/{plural}/{name}",
            "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}",
        ):
            app.router.add_get(path, self._get)
            app.router.add_patch(path, self._patch)
            app.router.add_delete(path, self._delete)
        app.router.add_post("/replicas/{name}/v2/repository/index", self._replica_index)
        app.router.add_get("/replicas/{name}/v2/health/ready", self._replica_ready)

        async def serve() -> None:
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    @staticmethod
    def _key(request: web.Request) -> tuple[str, str, str, str]:
        info = request.match_info
        api = f"{info['group']}/{info['version']}" if "group" in info else info["version"]
        return api, info["plural"], info["ns"], info["name"]

    async def _get(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", request.path, None))
        obj = self.objects.get(self._key(request))
        if obj is None:
            return _not_found(request)
        return web.json_response(obj)

    async def _replica_index(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.index_reads[name] += 1
        return web.json_response(self.index.get(name, []))

    async def _replica_ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def _delete(self, request: web.Request) -> web.Response:
        self.requests.append(("DELETE", request.path, None))
        key = self._key(request)
        obj = self.objects.pop(key, None)
        if obj is None:
            return _not_found(request)
        if key[:2] == ("v1", "services"):  # the API answers a core Service's delete with it
            return web.json_response({**obj, "status": {}})
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})

    async def _patch(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("PATCH", request.path, body))
        key = self._key(request)
        obj = self.objects.get(key)
        if request.content_type == "application/apply-patch+yaml":
            if request.query.get("fieldManager") != "ember":
                return web.json_response({"kind": "Status", "code": 422}, status=422)
            generation = (obj or {}).get("metadata", {}).get("generation", 0)
            changed = obj is None or obj.get("spec") != body.get("spec")
            status = (obj or {}).get("status", {})
            obj = merge(copy.deepcopy(obj or {}), body)
            obj["metadata"]["generation"] = generation + 1 if changed else generation
            obj["status"] = status
            self.objects[key] = obj
            if key[0] == KSVC_API:
                asyncio.get_running_loop().create_task(self._settle(obj, key[3]))
            return web.json_response(obj)
        if request.content_type != "application/merge-patch+json":
            return web.json_response({"kind": "Status", "code": 415}, status=415)
        if obj is None:
            return _not_found(request)
        merge(obj, body)
        if key[0] == KSVC_API:
            scale = int(obj["spec"]["template"]["metadata"]["annotations"].get(MIN_SCALE, "0"))
            asyncio.get_running_loop().create_task(self._reconcile(obj, key[3], scale))
        return web.json_response(obj)

    async def _settle(self, obj: dict[str, Any], name: str) -> None:
        """What Knative's controllers do after an apply: Ready (or not) for the generation."""
        await asyncio.sleep(self.settle_s)
        status = obj["status"]
        status["observedGeneration"] = obj["metadata"]["generation"]
        if name in self.apply_failures:
            reason, message = self.apply_failures[name]
            status["conditions"] = [
                {
                    "type": "ConfigurationsReady",
                    "status": "False",
                    "reason": reason,
                    "message": message,
                },
                {"type": "Ready", "status": "False", "reason": reason, "message": message},
                {"type": "RoutesReady", "status": "True"},
            ]
            return
        status["conditions"] = [
            {"type": t, "status": "True"} for t in ("ConfigurationsReady", "Ready", "RoutesReady")
        ]
        status["url"] = f"http://{name}.{obj['metadata']['namespace']}.example.com"
        status["latestReadyRevisionName"] = f"{name}-{obj['metadata']['generation']:05d}"

    async def _reconcile(self, obj: dict[str, Any], name: str, scale: int) -> None:
        status = obj["status"]
        if scale >= 1 and name not in self.running:
            if name in self.failures:
                reason, message = self.failures[name]
                status["conditions"] = [
                    {"type": "Ready", "status": "False", "reason": reason, "message": message}
                ]
                return
            url, stop = await asyncio.get_running_loop().run_in_executor(None, self.backend, name)
            self.running[name] = stop
            status["address"] = {"url": url}
        elif scale == 0 and name in self.running:
            stop = self.running.pop(name)
            await asyncio.get_running_loop().run_in_executor(None, stop)


def _not_found(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
    body["message"] = f'services.serving.knative.dev "{name}" not found'
    return web.Response(status=404, text=json.dumps(body), content_type="application/json")


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig whose current context is ``server`` with a bearer token."""
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "fake", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    return path
