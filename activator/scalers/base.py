"""The ``Scaler`` seam: how the activator gets and gives back replicas of a model.

A scaler starts a replica (returning as soon as it has an address), says when it is ready,
stops it, reports when it exits on its own, and streams what the replica says of its models
(:meth:`Scaler.statuses`: the local scaler passes on its status pipe's lines as they come, the
Knative scaler reads the replica's repository index). Whatever it asks a replica over HTTP goes
through the activator's one :class:`~activator.replica_client.ReplicaClient`
(``replica_client``). :class:`~activator.scalers.local.LocalScaler`
(the embedded default) runs ``ember serve`` processes on loopback ports;
:class:`~activator.scalers.knative.KnativeScaler` drives a Knative Service's min-scale.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from activator.replica_client import ReplicaClient
from contracts.replica import ModelStatus
from contracts.stack import ModelSpec


@dataclass
class ReplicaHandle:
    """A started replica: where it answers, and what its start cost (seconds, by phase)."""

    model: str
    url: str
    timings: dict[str, float] = field(default_factory=dict)
    pid: int | None = None  # a local process's; None for replicas elsewhere
    warm: bool = False  # started from the local scaler's warm pool
    # the name its server answers to, when not the model's (a command engine's, said on READY)
    served_as: str | None = None
    health: str | None = None  # a command engine's health path (else the predictor's)


@dataclass(frozen=True)
class StatusReport:
    """What a replica said of some of its models, and when (``time.monotonic()``: when it said
    it, or for a read of its index, when it was asked)."""

    statuses: tuple[ModelStatus, ...]
    at: float
    first: bool = False  # the replica's every model, as the watch began


class Scaler(Protocol):
    # the activator's (it closes it); a scaler on its own makes its own
    replica_client: ReplicaClient

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

    def statuses(self, handle: ReplicaHandle) -> AsyncIterator[StatusReport]:
        """What the replica says of its models from now on: first all of them (``first``), then
        each change as it is known, until the replica is gone (or the caller stops)."""
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
