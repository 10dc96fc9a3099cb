"""A loopback fake of exactly the Kubernetes API calls the Knative scaler makes.

GET and PATCH (JSON merge patch) of ``serving.knative.dev/v1`` services in namespaces, with a
small "controller": when a service's min-scale annotation goes to 1 or more it starts a backend
(the test's real ``ember serve`` process), then reports the service Ready with that backend's URL
as ``status.address.url``; when min-scale goes back to 0 it stops the backend. Every request is
recorded. It binds 127.0.0.1 port 0 and stops with the test.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

MIN_SCALE = "autoscaling.knative.dev/min-scale"
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


class FakeKnative:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
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

    def add_service(self, namespace: str, name: str) -> None:
        self.services[(namespace, name)] = {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"metadata": {"annotations": {MIN_SCALE: "0"}}}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    def fail_on_wake(self, name: str, reason: str, message: str) -> None:
        self.failures[name] = (reason, message)

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
        path = "/apis/serving.knative.dev/v1/namespaces/{ns}/services/{name}"
        app.router.add_get(path, self._get)
        app.router.add_patch(path, self._patch)

        async def serve() -> None:
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    def _find(self, request: web.Request) -> dict[str, Any] | None:
        return self.services.get((request.match_info["ns"], request.match_info["name"]))

    async def _get(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", request.path, None))
        obj = self._find(request)
        if obj is None:
            return _not_found(request)
        return web.json_response(obj)

    async def _patch(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("PATCH", request.path, body))
        if request.content_type != "application/merge-patch+json":
            return web.json_response({"kind": "Status", "code": 415}, status=415)
        obj = self._find(request)
        if obj is None:
            return _not_found(request)
        merge(obj, body)
        scale = int(obj["spec"]["template"]["metadata"]["annotations"].get(MIN_SCALE, "0"))
        name = request.match_info["name"]
        asyncio.get_running_loop().create_task(self._reconcile(obj, name, scale))
        return web.json_response(obj)

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
