"""The front door: the runtime's v2 paths for every configured model, whether or not it runs.

A plain ASGI application (no framework between the socket and the proxy: a warm request costs
one route match, one slot, one upstream call on a kept-alive connection). Requests for a model
take a slot on a ready replica, waiting in the model's queue if none is free (and waking the
model if it is at zero); the replica's answer goes back unchanged, errors included. The
activator's own errors use the OIP shape ``{"error": "..."}``.

Routes: ``/v2/health/live|ready``, ``GET /v2``, ``POST /v2/repository/index`` (every model and
its state), ``POST /v2/repository/models/{m}/load|unload`` (wake and wait / put to sleep),
``/v2/models/{m}[/versions/{v}][/infer|/ready|/config|/stats]``, ``GET /metrics``, and the admin
API under ``/admin`` (see :mod:`activator.admin`). A per-request deadline for the queue can be
given in milliseconds with the ``Ember-Deadline-Ms`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from activator import __version__
from activator.auth import Tokens
from activator.errors import (
    ActivatorError,
    BadRequest,
    DeadlineExceeded,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ReplicaFailed,
    ShuttingDown,
    Unauthorized,
    UnknownModel,
)
from activator.events import EventLog
from activator.metrics import ActivatorMetrics
from activator.pool import ModelPool, Ticket
from activator.scalers.base import Scaler
from contracts.stack import StackConfig

log = logging.getLogger("ember.activator")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# hop-by-hop headers, ours, and credentials (the activator's tokens end here): never passed
# between client and replica
HOP_HEADERS = {
    b"authorization",
    b"proxy-authorization",
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"host",
    b"content-length",
    b"te",
    b"upgrade",
    b"proxy-connection",
    b"ember-deadline-ms",
}
_REPLICA_STATE = {"zero": "UNAVAILABLE", "starting": "LOADING", "ready": "READY"}
UNREACHABLE_RETRIES = 2  # a request that never reached a replica goes to another one
MODEL_ACTIONS = {"", "infer", "ready", "config", "stats"}
_JSON = [(b"content-type", b"application/json")]


class Activator:
    """The activator's state: one pool per model, the scaler, the event log and the metrics."""

    def __init__(
        self,
        stack: StackConfig,
        scaler: Scaler,
        *,
        host: str = "127.0.0.1",
        request_timeout_s: float = 300.0,
        access_log: bool = False,
    ) -> None:
        self.stack = stack
        self.settings = stack.settings
        self.scaler = scaler
        self.metrics = ActivatorMetrics()
        self.events = EventLog(self.settings.events)
        self.pools = {
            name: ModelPool(
                spec,
                scaler,
                self.events,
                self.metrics,
                grace_period_s=self.settings.grace_period_s,
            )
            for name, spec in stack.models.items()
        }
        self.metrics.watch(lambda: self.pools)
        s = self.settings
        self.admin_tokens = Tokens.load(s.admin_token_env, s.admin_token_file, "admin")
        self.api_tokens = Tokens.load(s.api_token_env, s.api_token_file, "API")
        self.loopback = _is_loopback(host)
        if self.api_tokens is None and not self.loopback:
            log.warning(
                "the data plane is open to anyone who reaches %s: set %s (or api_token_file) "
                "to require a bearer token",
                host,
                self.settings.api_token_env,
            )
        self.request_timeout_s = request_timeout_s
        self.access_log = access_log
        self.session: aiohttp.ClientSession | None = None
        self.closing = False

    async def startup(self) -> None:
        self.session = aiohttp.ClientSession(
            # under the replicas' own 5 s, so a reused connection is never one they are closing
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        self._learn_from_log()
        for pool in self.pools.values():
            pool.start()
        fill = getattr(self.scaler, "fill_pool", None)
        if fill is not None:  # the local scaler's warm pool
            self.metrics.watch_warm_pool(self.scaler.pool_status)  # type: ignore[attr-defined]
            fill()

    def _learn_from_log(self) -> None:
        """Seed each model's keep-alive policy with the arrivals the event log remembers."""
        path = self.settings.events
        if path is None or not path.exists() or path.stat().st_size == 0:
            return
        from activator.events import read_events

        arrivals: dict[str, list[float]] = {}
        for event in read_events(path):
            if event.get("event") == "request" and event.get("model") in self.pools:
                arrivals.setdefault(event["model"], []).append(
                    float(event.get("arrival") or event["ts"])
                )
        for name, times in arrivals.items():
            self.pools[name].learn(times)
        if arrivals:
            log.info("policies learned from %s: %s", path, {k: len(v) for k, v in arrivals.items()})

    def refuse_waiters(self) -> None:
        """Take no more requests; answer the queued ones 503 (the grace period is over)."""
        self.closing = True
        for pool in self.pools.values():
            pool.refuse_waiters()

    async def shutdown(self) -> None:
        self.closing = True
        await asyncio.gather(*(p.aclose() for p in self.pools.values()), return_exceptions=True)
        await self.scaler.aclose()
        if self.session is not None:
            await self.session.close()
        self.events.close()

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except ActivatorError as exc:
            await _error(send, exc)
        except Exception as exc:  # a bug of ours: say so, in the protocol's shape
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            await _error(send, ActivatorError(f"activator error: {type(exc).__name__}: {exc}"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        parts = path.strip("/").split("/")
        if (
            parts[:2] != ["v2", "health"]
            and parts[0] != "admin"
            and not self.authorized(scope["headers"])
        ):
            raise Unauthorized("this endpoint needs 'Authorization: Bearer <token>'")
        if parts[0] == "v2":
            if len(parts) >= 3 and parts[1] == "models":
                await self._model_route(parts, scope, receive, send)
                return
            if parts[1:] in (["health", "live"], ["health", "ready"]):
                _only(method, "GET")
                key = "live" if parts[2] == "live" else "ready"
                ok = not self.closing
                await _json(send, 200 if ok else 503, {key: ok})
                return
            if parts[1:] == [] or parts[1:] == [""]:
                _only(method, "GET")
                await _json(
                    send,
                    200,
                    {
                        "name": "ember-activator",
                        "version": __version__,
                        "extensions": ["model_repository"],
                    },
                )
                return
            if parts[1:] == ["repository", "index"]:
                _only(method, "POST")
                await _json(send, 200, self.index())
                return
            if len(parts) == 5 and parts[1:3] == ["repository", "models"]:
                _only(method, "POST")
                await self._repository_action(parts[3], parts[4], send)
                return
        elif parts == ["metrics"]:
            _only(method, "GET")
            body = generate_latest(self.metrics.registry)
            await _send(send, 200, body, [(b"content-type", CONTENT_TYPE_LATEST.encode())])
            return
        elif parts[0] == "admin":
            from activator.admin import handle_admin

            self._authorize(scope)
            await handle_admin(self, parts[1:], method, await _body(receive, 1 << 20), send)
            return
        raise NotFound(f"no route for {method} {path}")

    def index(self) -> list[dict[str, Any]]:
        out = []
        for name, pool in self.pools.items():
            entry = {"name": name, "state": _REPLICA_STATE.get(pool.state, "UNLOADING")}
            entry["reason"] = pool.reason if pool.state != "ready" else ""
            entry["activator_state"] = pool.state
            out.append(entry)
        return out

    def pool(self, name: str) -> ModelPool:
        pool = self.pools.get(name)
        if pool is None:
            raise UnknownModel(f"model '{name}' is not configured here")
        return pool

    async def _repository_action(self, name: str, action: str, send: Send) -> None:
        pool = self.pool(name)
        if action == "load":
            pool.warm(pool.spec.keep_alive_s, source="repository-load")
            deadline = time.monotonic() + pool.spec.startup_timeout_s
            while pool.state != "ready":
                if time.monotonic() > deadline or (pool.state == "zero" and pool.start_failed):
                    raise DeadlineExceeded(f"model '{name}' did not load: {pool.reason}")
                await asyncio.sleep(0.02)
            await _send(send, 200, b"", [])
        elif action == "unload":
            pool.sleep()
            await _send(send, 200, b"", [])
        else:
            raise NotFound(f"no repository action '{action}' (load or unload)")

    def _authorize(self, scope: Scope) -> None:
        if self.admin_tokens is None:
            if self.loopback:
                return  # a one-machine stack bound to loopback: only local users reach it
            raise NotFound(
                "the admin API is off: set a token in the environment variable "
                f"{self.settings.admin_token_env} (or admin_token_file) to turn it on"
            )
        if not self.admin_tokens.allows_headers(scope["headers"]):
            raise Unauthorized("the admin API needs 'Authorization: Bearer <admin token>'")

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether a data-plane request may pass (always, when no API token is set)."""
        return self.api_tokens is None or self.api_tokens.allows_headers(headers)

    # ------------------------------------------------------------------ the data path
    async def _model_route(
        self, parts: list[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        route = model_route(parts)
        if route is None:
            raise NotFound(f"no route for {scope['method']} {scope['path']}")
        name, action = route
        pool = self.pool(name)
        if action == "ready" and pool.state != "ready":
            # at zero the model takes requests (they wake it): ready, unless it cannot start
            failed = pool.start_failed
            await _json(
                send,
                503 if failed else 200,
                {"name": name, "ready": not failed},
                [(b"ember-model-state", pool.state.encode())],
            )
            return
        await self._proxy(pool, scope, receive, send)

    async def _proxy(self, pool: ModelPool, scope: Scope, receive: Receive, send: Send) -> None:
        arrival = scope.get("arrival") or time.time()
        deadline_s = _deadline(scope)
        body = await _body(receive, self.settings.max_request_bytes)
        status = 500
        ticket: Ticket | None = None
        started: float | None = None
        cold = False
        queued_s = 0.0
        try:
            if self.closing:
                raise ShuttingDown("the activator is shutting down")
            for attempt in range(UNREACHABLE_RETRIES + 1):
                ticket = await _acquire(pool, deadline_s, receive)
                if ticket is None:  # the client went away while queued
                    status = 499
                    return
                cold = cold or ticket.cold
                queued_s += ticket.queued_s
                started = time.time()
                try:
                    status = await self._forward(pool, ticket, scope, body, send)
                    return
                except _Unreachable as exc:
                    # the request never reached the replica: safe to send elsewhere
                    pool.suspect(ticket.replica)
                    pool.release(ticket)
                    ticket = None
                    if attempt == UNREACHABLE_RETRIES:
                        raise ReplicaFailed(
                            f"model '{pool.name}': no replica could be reached ({exc})"
                        ) from None
        except ActivatorError as exc:
            status = exc.status_code
            raise
        finally:
            if ticket is not None:
                pool.release(ticket)
                ticket.cold, ticket.queued_s = cold, queued_s
            self.record(pool, scope["path"], arrival, started, status, ticket, queued_s)

    def record(
        self,
        pool: ModelPool,
        path: str | bytes,
        arrival: float,
        started: float | None,
        status: int,
        ticket: Ticket | None,
        queued_s: float | None = None,
    ) -> None:
        """One request's event line and metrics."""
        queued = queued_s if queued_s is not None else (ticket.queued_s if ticket else 0.0)
        if isinstance(path, bytes):
            path = path.decode("latin-1")
        if self.access_log:
            log.info("%s %s %d (queued %.3fs)", pool.name, path, status, queued)
        counters = pool.counters
        counter = counters.get(status)
        if counter is None:
            counter = counters[status] = self.metrics.requests.labels(pool.name, str(status))
        counter.inc()
        hist = pool.queue_hist
        if hist is None:
            hist = pool.queue_hist = self.metrics.queue_seconds.labels(pool.name)
        hist.observe(queued)
        self.events.request(
            pool.name,
            path,
            arrival,
            started,
            time.time(),
            status,
            bool(ticket and ticket.cold),
            queued,
            ticket.replica.id if ticket else None,
        )

    async def _forward(
        self, pool: ModelPool, ticket: Ticket, scope: Scope, body: bytes, send: Send
    ) -> int:
        assert self.session is not None
        url = ticket.replica.url + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k not in HOP_HEADERS
        ]
        try:
            async with self.session.request(
                scope["method"], url, data=body, headers=headers
            ) as response:
                payload = await response.read()
                status = response.status
                out = [
                    (k, v)
                    for k, v in response.raw_headers
                    if k.lower() not in HOP_HEADERS and k.lower() not in (b"date", b"server")
                ]
        except aiohttp.ClientConnectorError as exc:
            raise _Unreachable(f"{type(exc).__name__}: {exc}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            pool.suspect(ticket.replica)
            raise ReplicaFailed(
                f"model '{pool.name}': replica {ticket.replica.id} went away before it "
                f"answered ({type(exc).__name__}: {exc}); the request was not retried"
            ) from None
        except TimeoutError:
            raise DeadlineExceeded(
                f"model '{pool.name}': replica {ticket.replica.id} did not answer within "
                f"{self.request_timeout_s:g}s"
            ) from None
        await _send(send, status, payload, out)
        return status


class _Unreachable(Exception):
    """The connection to the replica failed before the request was sent."""


def model_route(parts: list[str]) -> tuple[str, str] | None:
    """``["v2", "models", NAME, ("versions", V,) ACTION?]`` -> (NAME, ACTION), else None."""
    if len(parts) < 3 or parts[0] != "v2" or parts[1] != "models":
        return None
    rest = parts[3:]
    if len(rest) >= 2 and rest[0] == "versions":
        rest = rest[2:]
    action = rest[0] if rest else ""
    if len(rest) > 1 or action not in MODEL_ACTIONS:
        return None
    return parts[2], action


async def _acquire(pool: ModelPool, deadline_s: float | None, receive: Receive) -> Ticket | None:
    """A slot; while queued, a client that disconnects gives its place up (None)."""
    ticket = pool.try_acquire()
    if ticket is not None:
        return ticket
    waiting = asyncio.ensure_future(pool.acquire(deadline_s))
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((waiting, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        waiting.cancel()
        gone.cancel()
        raise
    gone.cancel()
    if waiting.done():
        return waiting.result()  # a slot, or the queue's error (full, deadline, failed start)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    return None


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _body(receive: Receive, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away before sending its request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _deadline(scope: Scope) -> float | None:
    for key, value in scope["headers"]:
        if key == b"ember-deadline-ms":
            try:
                ms = float(value)
            except ValueError:
                raise BadRequest(f"Ember-Deadline-Ms must be milliseconds, got {value!r}") from None
            if not 0 < ms <= 86_400_000:
                raise BadRequest("Ember-Deadline-Ms must be above 0 and at most a day")
            return ms / 1000
    return None


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"method {method} not allowed here (use {allowed})")


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _send(send, status, json.dumps(payload).encode(), [*_JSON, *(headers or [])])


async def _error(send: Send, exc: ActivatorError) -> None:
    headers = list(exc.headers)
    if exc.retry_after_s is not None:
        headers.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
    with contextlib.suppress(Exception):  # the response may have started; nothing more to say
        await _json(send, exc.status_code, {"error": str(exc)}, headers)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
