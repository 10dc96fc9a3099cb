"""The ``Scaler`` seam: how the activator gets and gives back replicas of a model.

A scaler starts a replica (returning as soon as it has an address), says when it is ready,
stops it, and reports when it exits on its own. :class:`~activator.scalers.local.LocalScaler`
(the embedded default) runs ``ember serve`` processes on loopback ports;
:class:`~activator.scalers.knative.KnativeScaler` drives a Knative Service's min-scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from contracts.stack import ModelSpec


@dataclass
class ReplicaHandle:
    """A started replica: where it answers, and what its start cost (seconds, by phase)."""

    model: str
    url: str
    timings: dict[str, float] = field(default_factory=dict)
    pid: int | None = None  # a local process's; None for replicas elsewhere
    warm: bool = False  # started from the local scaler's warm pool


class Scaler(Protocol):
    async def start(self, spec: ModelSpec) -> ReplicaHandle:
        """Start a replica; return once it has an address (it may still be loading).

        A start that fails raises :class:`~activator.errors.ReplicaStartFailed` with its kind.
        """
        ...

    async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        """Return when the replica's model is ready to answer.

        Raise :class:`~activator.errors.ReplicaStartFailed`: ``LOAD_FAILED`` (with the
        replica's ``failure`` and reason) as soon as the replica says its model cannot load,
        ``EXITED`` if it goes away, ``PLATFORM`` if the platform refuses it, ``TIMED_OUT`` once
        ``timeout_s`` has passed.
        """
        ...

    async def wait_exit(self, handle: ReplicaHandle) -> str:
        """Return (with a reason) when the replica goes away without being asked to."""
        ...

    async def healthy(self, handle: ReplicaHandle) -> bool:
        """Whether the replica answers ``/v2/health/ready`` now."""
        ...

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        """Stop the replica: let in-flight work finish within ``grace_s``, then force it."""
        ...

    async def aclose(self) -> None:
        """Stop everything this scaler started."""
        ...


async def probe_ready(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether ``url`` answers ``/v2/health/ready`` with 200 now."""
    try:
        async with session.get(url + "/v2/health/ready") as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
