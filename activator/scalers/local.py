"""The local scaler (the embedded default): replicas are ``ember serve`` processes on loopback."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from activator.errors import ModelUnavailable
from activator.scalers.base import ReplicaHandle, probe_ready
from contracts.proc import die_with_parent, rss_bytes
from contracts.stack import ModelSpec

log = logging.getLogger("ember.activator")

_LISTENING = re.compile(r"ember serve: listening on (http://\S+)")
REFILL_DELAY_S = 2.0
_STANDBY = re.compile(r"ember serve: standby (\{.*\})")
_PHASE = re.compile(r'^ember_model_load_phase_seconds\{[^}]*phase="(\w+)"[^}]*\} (\S+)$', re.M)


@dataclass
class _Process:
    proc: asyncio.subprocess.Process
    tail: collections.deque[str]
    readers: list[asyncio.Task[None]]
    stopping: bool = False
    report: dict[str, float] = field(default_factory=dict)  # a standby's preload report


class LocalScaler:
    """Replicas as local ``ember serve`` processes on 127.0.0.1, port 0.

    With ``warm_pool`` > 0 it keeps that many ``ember serve --standby`` processes ready: their
    imports done, no model, no threads, no CUDA context (each is its own exec-ed process, never a
    fork). A start hands one of them its arguments instead of starting Python from nothing, and a
    replacement is started once that replica is ready (not while it loads: they would share the
    CPU). They cost memory only; :meth:`pool_status` says how much.
    """

    def __init__(
        self,
        *,
        cache_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        listen_timeout_s: float = 60.0,
        poll_s: float = 0.02,
        warm_pool: int = 0,
    ) -> None:
        self.cache_dir = cache_dir
        self.extra_args = extra_args
        self.env = env
        self.listen_timeout_s = listen_timeout_s
        self.poll_s = poll_s
        self.warm_pool = warm_pool
        self._procs: dict[int, _Process] = {}
        self._standby: collections.deque[_Process] = collections.deque()
        self._filling: set[asyncio.Task[None]] = set()
        self._closed = False
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ the warm pool
    def fill_pool(self) -> None:
        """Start standby processes until the pool holds ``warm_pool`` (in the background)."""
        if self._closed:
            return
        while len(self._standby) + len(self._filling) < self.warm_pool:
            task = asyncio.create_task(self._spawn_standby())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _spawn(self, args: list[str], *, standby: bool, label: str) -> _Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ember",
            "serve",
            *args,
            stdin=asyncio.subprocess.PIPE if standby else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the activator, which drains
            preexec_fn=die_with_parent,
        )
        assert proc.stdout is not None and proc.stderr is not None
        tail: collections.deque[str] = collections.deque(maxlen=30)
        state = _Process(proc, tail, [])
        state.readers.append(asyncio.create_task(self._pump(proc.stderr, tail, label)))
        return state

    async def _spawn_standby(self) -> None:
        state = await self._spawn(["--standby"], standby=True, label="standby")
        assert state.proc.stdout is not None
        try:
            line = await asyncio.wait_for(state.proc.stdout.readline(), self.listen_timeout_s)
            match = _STANDBY.search(line.decode(errors="replace"))
            if match is None:
                raise RuntimeError(f"no standby line{_last(state.tail)}")
            state.report = json.loads(match.group(1))
        except (Exception, asyncio.CancelledError) as exc:
            await self._reap(state)
            if not isinstance(exc, asyncio.CancelledError):
                log.warning("a warm-pool process failed to start: %s", exc)
                return
            raise
        if self._closed:
            await self._reap(state)
            return
        log.info(
            "warm pool: process %d ready (preload %.2fs, %.0f MB)",
            state.proc.pid,
            state.report.get("preload_s", 0.0),
            rss_bytes(state.proc.pid) / 1e6,
        )
        self._standby.append(state)
        state.readers.append(asyncio.create_task(self._watch_standby(state)))

    async def _watch_standby(self, state: _Process) -> None:
        """A standby that dies while waiting (killed, out of memory) is replaced."""
        await state.proc.wait()
        if state in self._standby:
            self._standby.remove(state)
            log.warning(
                "warm pool: process %d exited with %s while waiting%s",
                state.proc.pid,
                state.proc.returncode,
                _last(state.tail),
            )
            self.fill_pool()

    def _take_standby(self) -> _Process | None:
        while self._standby:
            state = self._standby.popleft()
            if state.proc.returncode is None:
                return state
            for task in state.readers:
                task.cancel()
        return None

    def pool_status(self) -> tuple[int, int]:
        """(standby processes ready now, their resident memory in bytes)."""
        ready = [s for s in self._standby if s.proc.returncode is None]
        return len(ready), sum(rss_bytes(s.proc.pid) for s in ready)

    async def _reap(self, state: _Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            state.proc.kill()
        await state.proc.wait()
        for task in state.readers:
            task.cancel()
        await asyncio.gather(*state.readers, return_exceptions=True)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        return self._session

    async def start(self, spec: ModelSpec) -> ReplicaHandle:
        args = ["--config", str(spec.config_path), "--host", "127.0.0.1", "--port", "0"]
        if self.cache_dir is not None:
            args += ["--cache-dir", str(self.cache_dir)]
        args += list(self.extra_args)
        started = time.perf_counter()
        state = self._take_standby()
        warm = state is not None
        if state is not None:
            assert state.proc.stdin is not None
            state.proc.stdin.write((json.dumps(args) + "\n").encode())
            with contextlib.suppress(ConnectionError):
                await state.proc.stdin.drain()
            state.proc.stdin.close()
            if state.proc.returncode is not None:  # it died just now: start from nothing
                await self._reap(state)
                state, warm = None, False
        if state is None:
            state = await self._spawn(args, standby=False, label=spec.name)
        proc, tail = state.proc, state.tail
        assert proc.stdout is not None
        self._procs[proc.pid] = state
        try:
            url = await asyncio.wait_for(
                self._listening(proc.stdout, tail, spec.name), self.listen_timeout_s
            )
        except BaseException as exc:
            await self._kill(proc.pid)
            if isinstance(exc, TimeoutError):
                raise ModelUnavailable(
                    f"model '{spec.name}': its replica did not listen within "
                    f"{self.listen_timeout_s:g}s{_last(tail)}"
                ) from None
            raise
        state.readers.append(asyncio.create_task(self._pump(proc.stdout, tail, spec.name)))
        timings = {"process_start": time.perf_counter() - started}
        return ReplicaHandle(spec.name, url, timings, pid=proc.pid, warm=warm)

    async def _listening(
        self, stream: asyncio.StreamReader, tail: collections.deque[str], model: str
    ) -> str:
        while True:
            line = await stream.readline()
            if not line:
                await asyncio.sleep(0.05)  # let the stderr pump catch the reason
                raise ModelUnavailable(
                    f"model '{model}': its replica exited before listening{_last(tail)}"
                )
            text = line.decode(errors="replace").rstrip()
            match = _LISTENING.search(text)
            if match:
                return match.group(1)
            tail.append(text)

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, tail: collections.deque[str], model: str) -> None:
        """Keep the pipe drained; the last lines explain a failure."""
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            tail.append(text)
            log.debug("[%s] %s", model, text)

    async def wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        try:
            await self._wait_ready(handle, timeout_s)
        finally:
            # refill once the new replica has answered its first requests: a standby's imports
            # take a core for a second or two, which that first answer should not share
            asyncio.get_running_loop().call_later(REFILL_DELAY_S, self.fill_pool)

    async def _wait_ready(self, handle: ReplicaHandle, timeout_s: float) -> None:
        state = self._state(handle)
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while True:
            if state.proc.returncode is not None:
                await asyncio.sleep(0.05)
                raise ModelUnavailable(
                    f"model '{handle.model}': its replica exited with {state.proc.returncode} "
                    f"while loading{_last(state.tail)}"
                )
            if await self.healthy(handle):
                handle.timings["until_ready"] = time.perf_counter() - started
                handle.timings.update(await self._load_phases(handle))
                return
            if time.monotonic() > deadline:
                raise ModelUnavailable(
                    f"model '{handle.model}': its replica was not ready within {timeout_s:g}s"
                    f"{_last(state.tail)}"
                )
            await asyncio.sleep(self.poll_s)

    async def healthy(self, handle: ReplicaHandle) -> bool:
        state = self._procs.get(handle.pid or 0)
        if state is None or state.proc.returncode is not None:
            return False
        return await probe_ready(self._http(), handle.url)

    async def _load_phases(self, handle: ReplicaHandle) -> dict[str, float]:
        """The replica's own account of its load (plan, fetch, imports, load, warmup, ...)."""
        try:
            async with self._http().get(handle.url + "/metrics") as r:
                text = await r.text()
        except (aiohttp.ClientError, TimeoutError):
            return {}
        phases: dict[str, float] = {}
        for match in _PHASE.finditer(text):
            phases[match.group(1)] = phases.get(match.group(1), 0.0) + float(match.group(2))
        return phases

    async def wait_exit(self, handle: ReplicaHandle) -> str:
        state = self._state(handle)
        code = await state.proc.wait()
        await asyncio.gather(*state.readers, return_exceptions=True)
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        return f"replica pid {state.proc.pid} {how}{_last(state.tail)}"

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

    def _state(self, handle: ReplicaHandle) -> _Process:
        state = self._procs.get(handle.pid or 0)
        if state is None:
            raise ModelUnavailable(f"model '{handle.model}': its replica is gone")
        return state

    async def _kill(self, pid: int) -> None:
        state = self._procs.pop(pid, None)
        if state is not None:
            await self._reap(state)

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._filling):
            task.cancel()
        await asyncio.gather(*self._filling, return_exceptions=True)
        while self._standby:
            await self._reap(self._standby.popleft())
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
        if self._session is not None:
            await self._session.close()
            self._session = None


def _last(tail: collections.deque[str]) -> str:
    lines = [t for t in tail if t.strip()]
    return f": {lines[-1][-300:]}" if lines else ""
