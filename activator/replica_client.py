"""The activator's one HTTP client of its replicas: whether one is ready, its repository index,
a model's metadata, what a command engine's server answers to, the repository commands (sleep
at a level, load), and a command engine's own sleep and wake calls (:mod:`contracts.engine_calls`).

One :class:`ReplicaClient` per activator, its session created on first use and closed with the
activator (:meth:`ReplicaClient.aclose`); the scalers, the groups and the metadata book all
speak through it, so no other module of the activator opens an HTTP session to a replica.

A command answers None when the replica did it, else a :class:`Refusal`: the replica's status and
the start of its error body, or (no status) the connection's failure; the index comes back as
typed :class:`~contracts.replica.ModelStatus` entries, the malformed ones left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from contracts.engine_calls import EngineCall
from contracts.replica import ContractViolation, ModelStatus, SleepLevel, model_status

INDEX_TIMEOUT_S = 5.0  # an index read, and the default for anything else
READY_TIMEOUT_S = 2.0  # a readiness probe
METADATA_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Refusal:
    """Why a replica did not carry out a command."""

    status: int | None  # the replica's answer; None: it gave none (unreachable, timed out)
    detail: str  # the start of its error body, or the connection's failure

    def __str__(self) -> str:
        return self.detail if self.status is None else f"{self.status}: {self.detail}"


class ReplicaClient:
    """One HTTP session for every replica the activator speaks to; :meth:`aclose` it."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ready(self, url: str, path: str = "/v2/health/ready") -> bool:
        """Whether the replica at ``url`` answers ``path`` (its readiness: the predictor's
        ``/v2/health/ready``, or a command engine's health path) with 200 now."""
        timeout = aiohttp.ClientTimeout(total=READY_TIMEOUT_S)
        try:
            async with self._http().get(url + path, timeout=timeout) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def index(self, url: str, timeout_s: float = INDEX_TIMEOUT_S) -> list[ModelStatus] | None:
        """The models of the replica at ``url``; None if it did not answer with an index (its
        health check and crash watch deal with a replica that does not answer)."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._http().post(
                url + "/v2/repository/index", json={}, timeout=timeout
            ) as r:
                if r.status != 200:
                    return None
                entries = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        statuses = []
        for raw in entries if isinstance(entries, list) else []:
            try:
                statuses.append(model_status(raw))
            except (ContractViolation, KeyError, TypeError, ValueError):
                continue
        return statuses

    async def metadata(self, url: str, model: str) -> Any:
        """The JSON ``GET /v2/models/{model}`` answers with 200; ValueError on another status,
        :class:`aiohttp.ClientError` or TimeoutError when the replica does not answer."""
        timeout = aiohttp.ClientTimeout(total=METADATA_TIMEOUT_S)
        async with self._http().get(f"{url}/v2/models/{model}", timeout=timeout) as response:
            if response.status != 200:
                raise ValueError(f"GET {url}/v2/models/{model} answered {response.status}")
            return await response.json(content_type=None)

    async def served_models(self, url: str) -> list[str]:
        """The model ids a command engine's server at ``url`` lists at ``GET /v1/models``
        (none when it lists none, or does not answer)."""
        timeout = aiohttp.ClientTimeout(total=METADATA_TIMEOUT_S)
        try:
            async with self._http().get(url + "/v1/models", timeout=timeout) as r:
                if r.status != 200:
                    return []
                data = (await r.json(content_type=None)).get("data") or []
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
            return []
        return [str(m.get("id")) for m in data if isinstance(m, dict)]

    async def sleep(
        self, url: str, model: str, level: SleepLevel, timeout_s: float
    ) -> Refusal | None:
        """Put ``model`` to sleep at ``level`` (an unload with the level): None once it has."""
        body = {"parameters": {"level": str(level)}}
        return await self._command(f"{url}/v2/repository/models/{model}/unload", body, timeout_s)

    async def load(self, url: str, model: str, timeout_s: float) -> Refusal | None:
        """Load ``model`` (or wake it, or retry its failed load): None once it serves."""
        return await self._command(f"{url}/v2/repository/models/{model}/load", None, timeout_s)

    async def call(self, url: str, call: EngineCall, timeout_s: float) -> Refusal | None:
        """Make one of a command engine's sleep or wake calls on its server at ``url``: None
        once it answered with a 2xx (a third-party server may answer 200 or 204, with or
        without a body)."""
        target = url + call.path
        return await self._command(
            target, call.body, timeout_s, method=call.method, ok=range(200, 300)
        )

    async def _command(
        self,
        url: str,
        body: object,
        timeout_s: float,
        *,
        method: str = "POST",
        ok: range = range(200, 201),
    ) -> Refusal | None:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._http().request(method, url, json=body, timeout=timeout) as r:
                return None if r.status in ok else Refusal(r.status, (await r.text())[:300])
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Refusal(None, f"{type(exc).__name__}: {exc}")

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise aiohttp.ClientConnectionError("the activator's replica client is closed")
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=INDEX_TIMEOUT_S)
            # no pool limit: a slow command must not make a readiness probe wait for a connection
            connector = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session
