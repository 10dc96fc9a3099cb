"""The repository extension of a group's replicas, as the activator speaks it: read a replica's
index, ask it to put a model to sleep at a level, or to load one.

A command answers None when the replica did it, else a :class:`Refusal`: the replica's status and
the start of its error body, or (no status) the connection's failure; the index comes back as
typed :class:`~contracts.replica.ModelStatus` entries, the malformed ones left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from contracts.replica import ContractViolation, ModelStatus, SleepLevel, model_status

INDEX_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Refusal:
    """Why a replica did not carry out a command."""

    status: int | None  # the replica's answer; None: it gave none (unreachable, timed out)
    detail: str  # the start of its error body, or the connection's failure

    def __str__(self) -> str:
        return self.detail if self.status is None else f"{self.status}: {self.detail}"


class ReplicaRepository:
    """One HTTP session for every replica of a group; :meth:`aclose` it."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def index(self, url: str) -> list[ModelStatus] | None:
        """The models of the replica at ``url``; None if it did not answer with an index (its
        health check and crash watch deal with a replica that does not answer)."""
        try:
            async with self._http().post(url + "/v2/repository/index", json={}) as r:
                entries = await r.json() if r.status == 200 else []
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        statuses = []
        for raw in entries if isinstance(entries, list) else []:
            try:
                statuses.append(model_status(raw))
            except (ContractViolation, KeyError, TypeError, ValueError):
                continue
        return statuses

    async def sleep(
        self, url: str, model: str, level: SleepLevel, timeout_s: float
    ) -> Refusal | None:
        """Put ``model`` to sleep at ``level`` (an unload with the level): None once it has."""
        body = {"parameters": {"level": level}}
        return await self._command(f"{url}/v2/repository/models/{model}/unload", body, timeout_s)

    async def load(self, url: str, model: str, timeout_s: float) -> Refusal | None:
        """Load ``model`` (or wake it, or retry its failed load): None once it serves."""
        return await self._command(f"{url}/v2/repository/models/{model}/load", None, timeout_s)

    async def _command(self, url: str, body: object, timeout_s: float) -> Refusal | None:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._http().post(url, json=body, timeout=timeout) as r:
                return None if r.status == 200 else Refusal(r.status, (await r.text())[:300])
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Refusal(None, f"{type(exc).__name__}: {exc}")

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=INDEX_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session
