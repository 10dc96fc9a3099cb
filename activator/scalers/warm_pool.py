"""The local scaler's warm pool: ``ember serve --standby`` processes kept ready to be handed a
model (:class:`WarmPool`).

A standby has done its imports and holds no model, no threads and no CUDA context (each is its
own exec-ed process, never a fork); it tells so on its status pipe (``standby``, with what its
imports cost), then waits for a :class:`~contracts.serve_order.ServeOrder` on its stdin. One
that dies while it waits (killed, out of memory) is replaced. They cost memory only:
:meth:`WarmPool.status` says how much.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence

from activator.errors import ReplicaStartFailed
from activator.scalers.process import Process, last_line, reap, spawn, until
from contracts.proc import rss_bytes
from contracts.replica import ContractViolation, Standby

log = logging.getLogger("ember.activator")


class WarmPool:
    """Up to ``size`` standby processes of ``command``, each started with ``env()``."""

    def __init__(
        self,
        command: Sequence[str],
        size: int,
        env: Callable[[], dict[str, str]],
        *,
        listen_timeout_s: float,
        forward: bool,
        preload: Sequence[str] = (),
    ) -> None:
        self.command, self.size, self._env = tuple(command), size, env
        # what each standby imports ahead for the stack's models (contracts.preload)
        self.args = ["--standby", *(arg for m in preload for arg in ("--preload", m))]
        self.listen_timeout_s, self.forward = listen_timeout_s, forward
        self._ready: collections.deque[Process] = collections.deque()
        self._filling: set[asyncio.Task[None]] = set()
        self._closed = False

    def fill(self) -> None:
        """Start standby processes until the pool holds ``size`` (in the background)."""
        if self._closed:
            return
        while len(self._ready) + len(self._filling) < self.size:
            task = asyncio.create_task(self._spawn())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    def take(self) -> Process | None:
        """A live standby, out of the pool; None when there is none."""
        while self._ready:
            state = self._ready.popleft()
            if state.proc.returncode is None:
                return state
            for task in state.readers:
                task.cancel()
        return None

    def status(self) -> tuple[int, int]:
        """(standby processes ready now, their resident memory in bytes)."""
        ready = [s for s in self._ready if s.proc.returncode is None]
        return len(ready), sum(rss_bytes(s.proc.pid) for s in ready)

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._filling):
            task.cancel()
        await asyncio.gather(*self._filling, return_exceptions=True)
        while self._ready:
            await reap(self._ready.popleft())

    async def _spawn(self) -> None:
        try:
            state = await spawn(
                self.command,
                self.args,
                env=self._env(),
                standby=True,
                label="standby",
                forward=self.forward,
            )
        except ReplicaStartFailed as exc:  # out of descriptors, say: refilled at the next start
            log.warning("a warm-pool process could not be started: %s", exc)
            return
        try:
            state.report = await self._report(state)
        except (Exception, asyncio.CancelledError) as exc:
            await reap(state)
            if not isinstance(exc, asyncio.CancelledError):
                log.warning("a warm-pool process failed to start: %s", exc)
                return
            raise
        if self._closed:
            await reap(state)
            return
        log.info(
            "warm pool: process %d ready (preload %.2fs, %.0f MB)",
            state.proc.pid,
            state.report.preload_s,
            rss_bytes(state.proc.pid) / 1e6,
        )
        if state.report.missing:
            log.warning(
                "warm pool: process %d could not import %s (its replicas import them as they "
                "load, or fail saying why)",
                state.proc.pid,
                ", ".join(state.report.missing),
            )
        self._ready.append(state)
        state.readers.append(asyncio.create_task(self._watch(state)))

    async def _report(self, state: Process) -> Standby:
        def broke(violation: ContractViolation) -> BaseException:
            return violation

        return await until(
            state,
            lambda: state.status.standby,
            time.monotonic() + self.listen_timeout_s,
            broke=broke,
            gone=lambda how: RuntimeError(f"it {how}{last_line(state.tail)}"),
            late=lambda: RuntimeError(f"no standby report within {self.listen_timeout_s:g}s"),
        )

    async def _watch(self, state: Process) -> None:
        """A standby that dies while waiting (killed, out of memory) is replaced."""
        await state.proc.wait()
        if state in self._ready:
            self._ready.remove(state)
            log.warning(
                "warm pool: process %d exited with %s while waiting%s",
                state.proc.pid,
                state.proc.returncode,
                last_line(state.tail),
            )
            self.fill()
