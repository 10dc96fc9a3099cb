"""The local scaler (the embedded default): replicas are ``ember serve`` processes on loopback.

Each process is given a pipe for its status (``ember serve --status-fd N``) and tells the scaler,
in :mod:`contracts.replica` events, that it is a ready standby, where it listens, and every change
of its model's state: :meth:`LocalScaler.start` returns on ``Listening``, :meth:`~LocalScaler.
wait_ready` on the model's ``READY`` (whose load phases become the handle's timings) or, at once,
on ``UNAVAILABLE`` with the kind of failure. Nothing parses the processes' stdout or stderr: they
are drained, and the last lines of stderr are kept to quote to a human in an error (starting a
process and reading its pipes: :mod:`activator.scalers.process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path

from activator.errors import ReplicaStartFailed, StartFailure
from activator.replica_client import ReplicaClient
from activator.scalers.base import ReplicaHandle, StatusReport
from activator.scalers.process import Process, last_line, reap, spawn, until
from activator.scalers.warm_pool import WarmPool
from contracts.logs import LogLevel
from contracts.replica import ContractViolation, Failed
from contracts.serve_order import ServeOrder, encode_order, serve_argv
from contracts.stack import ModelSpec

log = logging.getLogger("ember.activator")

REFILL_DELAY_S = 2.0


class LocalScaler:
    """Replicas as local ``ember serve`` processes on 127.0.0.1, port 0.

    With ``warm_pool`` > 0 it keeps that many ``ember serve --standby`` processes ready
    (:class:`~activator.scalers.warm_pool.WarmPool`). A start hands one of them its order
    instead of starting Python from nothing, and a replacement is started once that replica is
    ready (not while it loads: they would share the CPU). They cost memory only;
    :meth:`pool_status` says how much.

    ``command`` is what starts a replica (``ember serve``, given its arguments after it: a
    :class:`~contracts.serve_order.ServeOrder` rendered, which a standby is sent as JSON
    instead); tests give a fake that writes chosen status lines.
    """

    def __init__(
        self,
        *,
        command: Sequence[str] = (sys.executable, "-m", "ember", "serve"),
        cache_dir: Path | None = None,
        env: dict[str, str] | None = None,
        listen_timeout_s: float = 60.0,
        warm_pool: int = 0,
        withhold_env: Collection[str] = (),
        log_level: LogLevel = "info",
        forward_logs: bool = True,
        replica_client: ReplicaClient | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        self.command = tuple(command)
        self.cache_dir = cache_dir
        self.env = env
        # variables a replica must not see (the activator's tokens): its environment is the
        # activator's (or ``env``) without them
        self.withhold_env = frozenset(withhold_env)
        self.listen_timeout_s = listen_timeout_s
        # replicas log JSON records at the activator's level, re-logged at their own levels
        # (at DEBUG, without forward_logs): activator.scalers.process
        self.log_level = log_level
        self.forward_logs = forward_logs
        self._procs: dict[int, Process] = {}
        self.standby = WarmPool(
            self.command,
            warm_pool,
            self._child_env,
            listen_timeout_s=listen_timeout_s,
            forward=forward_logs,
            preload=preload,
        )
        self.replica_client = replica_client or ReplicaClient()

    # ------------------------------------------------------------------ the warm pool
    def fill_pool(self) -> None:
        """Start standby processes until the pool holds ``warm_pool`` (in the background)."""
        self.standby.fill()

    def pool_status(self) -> tuple[int, int]:
        """(standby processes ready now, their resident memory in bytes)."""
        return self.standby.status()

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        for name in self.withhold_env:
            env.pop(name, None)
        return env

    def order(self, spec: ModelSpec) -> ServeOrder:
        """What a replica of ``spec`` is told to serve, whether it starts fresh or warm."""
        return ServeOrder(
            configs=spec.config_paths,
            host="127.0.0.1",
            port=0,
            cache_dir=self.cache_dir,
            device_memory_budget=spec.device_memory_budget,
            host_memory_budget=spec.host_memory_budget,
            # a replica whose models cannot load stays up: the activator reaps it and says why
            stay_on_load_failure=True,
            log_level=self.log_level,
            log_format="json",
        )

    async def start(self, spec: ModelSpec) -> ReplicaHandle:
        order = self.order(spec)
        started = time.perf_counter()
        state = self.standby.take()
        if state is not None:
            handle = await self._start_warm(state, spec, order, started)
            if handle is not None:
                return handle
        state = await spawn(
            self.command,
            serve_argv(order),
            env=self._child_env(),
            standby=False,
            label=spec.name,
            forward=self.forward_logs,
        )
        return await self._started(state, spec, started, warm=False)

    async def _start_warm(
        self, state: Process, spec: ModelSpec, order: ServeOrder, started: float
    ) -> ReplicaHandle | None:
        """Hand the model's order to a standby (it keeps its status pipe); None when the
        standby turns out to be dead, killed as it was taken (its pipe refuses the order, or it
        dies before listening): the caller starts a fresh process.
        """
        assert state.proc.stdin is not None
        state.status.model = spec.name
        # its end of the pipe closed (the write failed: the transport is closing at once) means
        # it died, even before the event loop has reaped it
        try:
            state.proc.stdin.write(encode_order(order))
            gone = state.proc.stdin.is_closing()
            await state.proc.stdin.drain()
        except ConnectionError:
            gone = True
        state.proc.stdin.close()
        if gone or state.proc.returncode is not None:
            await reap(state)
            return None
        try:
            return await self._started(state, spec, started, warm=True)
        except ReplicaStartFailed as exc:
            code = state.proc.returncode
            if code is None or code >= 0:  # it ran and failed: a fresh process would too
                raise
            # a signal before it listened: a kill that landed as it was taken (the pipe still
            # took the arguments), not a failure of the model, which it had not begun to load
            log.warning(
                "warm pool: standby %d died as it took model %s (%s); starting a fresh process",
                state.proc.pid,
                spec.name,
                exc,
            )
            return None

    async def _started(
        self, state: Process, spec: ModelSpec, started: float, *, warm: bool
    ) -> ReplicaHandle:
        """The replica once it listens (killed if it does not)."""
        # what it must serve before it is ready: its model, or a group's members (a line told
        # before this is seen again by _wait_ready)
        state.status.expect = spec.members or (spec.name,)
        pid = state.proc.pid
        self._procs[pid] = state
        try:
            url = await self._listening(state, spec.name)
        except BaseException:
            await self._kill(pid)
            raise
        timings = {"process_start": time.perf_counter() - started}
        return ReplicaHandle(spec.name, url, timings, pid=pid, warm=warm, health=spec.health)

    async def _listening(self, state: Process, model: str) -> str:
        return await until(
            state,
            lambda: state.status.url,
            time.monotonic() + self.listen_timeout_s,
            broke=lambda violation: _broke_contract(model, violation),
            gone=lambda how: ReplicaStartFailed(
                f"its replica {how} before listening{last_line(state.tail)}", StartFailure.EXITED
            ),
            late=lambda: ReplicaStartFailed(
                f"its replica did not listen within "
                f"{self.listen_timeout_s:g}s{last_line(state.tail)}",
                StartFailure.NOT_LISTENING,
            ),
        )

    async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        try:
            await self._wait_ready(handle, timeout_s)
        finally:
            # refill once the new replica has answered its first requests: a standby's imports
            # take a core for a second or two, which that first answer should not share
            asyncio.get_running_loop().call_later(REFILL_DELAY_S, self.fill_pool)

    async def _wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        """Until the replica says its model is READY; fail as soon as it says it cannot be."""
        state = self._state(handle)
        status = state.status
        started = time.perf_counter()

        def ready() -> bool | None:
            if status.ready is None and status.settled():  # told before ``expect`` was set
                status.ready = status.models[status.expect[0]]
            if status.ready is not None:
                handle.served_as = status.ready.served_as
                return True
            now = status.readiness()
            if isinstance(now, Failed):
                first = now.failed[0]
                many = len(status.expect) > 1
                raise ReplicaStartFailed(
                    f"its replica cannot load it: {now.reasons() if many else first.reason}",
                    StartFailure.LOAD_FAILED,
                    first.failure,
                )
            return None

        await until(
            state,
            ready,
            time.monotonic() + timeout_s,
            broke=lambda violation: _broke_contract(handle.model, violation),
            gone=lambda how: ReplicaStartFailed(
                f"its replica {how} while loading{last_line(state.tail)}", StartFailure.EXITED
            ),
            late=lambda: ReplicaStartFailed(
                f"its replica was not ready within {timeout_s:g}s{last_line(state.tail)}",
                StartFailure.TIMED_OUT,
            ),
        )
        handle.timings["until_ready"] = time.perf_counter() - started
        handle.timings.update(status.phases())  # the replica's account of its load

    async def healthy(self, handle: ReplicaHandle) -> bool:
        state = self._procs.get(handle.pid or 0)
        if state is None or state.proc.returncode is not None:
            return False
        if handle.health is not None:  # another server's (engine: command)
            return await self.replica_client.ready(handle.url, handle.health)
        return await self.replica_client.ready(handle.url)

    async def statuses(self, handle: ReplicaHandle) -> AsyncIterator[StatusReport]:
        """What the replica's status pipe says of its models, as it says it."""
        state = self._procs.get(handle.pid or 0)
        if state is None:
            return
        queue = state.status.watch()
        try:
            now = time.monotonic()
            yield StatusReport(tuple(state.status.models.values()), now, first=True)
            while (said := await queue.get()) is not None:
                yield StatusReport((said[0],), said[1])
        finally:
            state.status.unwatch(queue)

    async def wait_exit(self, handle: ReplicaHandle) -> str:
        state = self._state(handle)
        code = await state.proc.wait()
        await asyncio.gather(*state.readers, return_exceptions=True)
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        return f"replica pid {state.proc.pid} {how}{last_line(state.tail)}"

    async def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        pid = handle.pid or 0
        state = self._procs.get(pid)
        if state is None or state.proc.returncode is not None:
            self._procs.pop(pid, None)
            return
        state.stopping = True
        with contextlib.suppress(ProcessLookupError):
            state.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(state.proc.wait(), grace_s + 5)
        except TimeoutError:
            log.warning("replica pid %d ignored SIGTERM for %.0fs: killing it", pid, grace_s + 5)
            await self._kill(pid)
        await asyncio.gather(*state.readers, return_exceptions=True)
        self._procs.pop(pid, None)

    def _state(self, handle: ReplicaHandle) -> Process:
        state = self._procs.get(handle.pid or 0)
        if state is None:
            raise ReplicaStartFailed("its replica is gone", StartFailure.EXITED)
        return state

    async def _kill(self, pid: int) -> None:
        state = self._procs.pop(pid, None)
        if state is not None:
            await reap(state)

    async def aclose(self) -> None:
        await self.standby.aclose()
        for state in list(self._procs.values()):
            if state.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    state.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pid, state in list(self._procs.items()):
            try:
                await asyncio.wait_for(state.proc.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                await self._kill(pid)
        for state in self._procs.values():
            await asyncio.gather(*state.readers, return_exceptions=True)
        self._procs.clear()
        await self.replica_client.aclose()


def _broke_contract(model: str, violation: ContractViolation) -> ReplicaStartFailed:
    return ReplicaStartFailed(
        f"its replica broke the status contract: {violation}",
        StartFailure.CONTRACT_VIOLATION,
    )
