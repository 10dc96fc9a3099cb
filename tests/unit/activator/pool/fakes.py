"""What the pool's tests share: a scaler that only keeps time, an event log that remembers, a
model spec, and waits on conditions (by loop turns on the manual clock, by time on the real one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from activator.errors import ReplicaStartFailed, StartFailure
from activator.events import EventLog
from activator.pool.clock import Clock, SystemClock
from activator.replica_client import ReplicaClient
from activator.scalers.base import ReplicaHandle, StatusReport
from contracts.events import Event, to_record
from contracts.stack import ModelSpec
from tests.fixtures.specs import model_spec

T = TypeVar("T")
E = TypeVar("E", bound=Event)


class FakeScaler:
    """Replicas that take ``ready_after_s`` on ``clock`` to start and never serve anything.

    ``fail``: a start raises it (a string: a typed LOAD_FAILED with that reason). A start slower
    than the startup timeout raises a typed TIMED_OUT at the timeout. With ``gate`` set, a start
    waits for that event instead of the clock (``start_gate``: before it has an address); with
    ``stop_gate`` set, a stop waits for it.
    """

    def __init__(
        self,
        ready_after_s: float = 0.05,
        fail: str | Exception | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.ready_after_s = ready_after_s
        self.fail = fail
        self.clock: Clock = SystemClock() if clock is None else clock
        self.gate: asyncio.Event | None = None
        self.start_gate: asyncio.Event | None = None
        self.stop_gate: asyncio.Event | None = None
        self.answers_health = True
        self.started = 0
        self.stopped = 0
        self.exits: dict[str, asyncio.Event] = {}
        self.replica_client = ReplicaClient()  # never used: its replicas serve nothing

    async def statuses(self, handle: ReplicaHandle) -> AsyncIterator[StatusReport]:
        yield StatusReport((), time.monotonic(), first=True)  # its replicas hold no model

    async def start(self, spec: ModelSpec) -> ReplicaHandle:
        self.started += 1
        if self.start_gate is not None:
            await self.start_gate.wait()
        handle = ReplicaHandle(spec.name, f"http://replica-{self.started}")
        self.exits[handle.url] = asyncio.Event()
        return handle

    async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        if self.gate is not None:
            await self._gated(handle, self.gate)
        elif self.ready_after_s > timeout_s:
            await self.clock.sleep(timeout_s)  # the behaviour faked: a start that times out
            raise ReplicaStartFailed(
                f"its replica was not ready within {timeout_s:g}s", StartFailure.TIMED_OUT
            )
        else:
            await self.clock.sleep(self.ready_after_s)  # the behaviour faked: a start's time
        if isinstance(self.fail, str):
            raise ReplicaStartFailed(self.fail, StartFailure.LOAD_FAILED)
        if self.fail is not None:
            raise self.fail

    async def _gated(self, handle: ReplicaHandle, gate: asyncio.Event) -> None:
        """Wait for ``gate``; a replica stopped meanwhile fails its start, as a real one does."""
        waits = [asyncio.ensure_future(e.wait()) for e in (gate, self.exits[handle.url])]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if not gate.is_set():
            raise ReplicaStartFailed("its replica exited while loading", StartFailure.EXITED)

    async def wait_exit(self, handle: ReplicaHandle) -> str:
        await self.exits[handle.url].wait()
        return "exited with -9"

    async def healthy(self, handle: ReplicaHandle) -> bool:
        return self.answers_health and not self.exits[handle.url].is_set()

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        self.stopped += 1
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        self.exits[handle.url].set()

    def crash(self, url: str) -> None:
        self.exits[url].set()

    async def aclose(self) -> None:
        return None


class Events(EventLog):
    """An event log that keeps what was emitted, in memory (and writes nothing)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.emitted: list[dict[str, Any]] = []

    def emit(self, event: E) -> E:
        stamped = super().emit(event)
        self.emitted.append(to_record(stamped))  # as its line reads
        return stamped

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.emitted]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.emitted if e["event"] == kind]


spec = model_spec  # the pool tests' name for it


async def turns(condition: Callable[[], bool], what: str, limit: int = 100) -> None:
    """Let the event loop run until ``condition`` holds; fail after ``limit`` turns (no time
    passes on a manual clock meanwhile, so this waits on work, never on a timer)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0)
    assert condition(), f"not within {limit} loop turns: {what}"


async def outcome(task: asyncio.Task[T]) -> T:
    """``task``'s result (or its exception, raised) once it is done, which it must be within a
    few loop turns: on a manual clock, awaiting a task that waits for time would never end."""
    await turns(task.done, f"{task.get_name()} to finish")
    return task.result()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds (real time); fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
        await asyncio.sleep(0.005)
