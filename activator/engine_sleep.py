"""A command engine put to sleep and woken through its own server's calls.

A model served by another OpenAI-compatible server (vLLM, SGLang; ``engine: command``) whose
config names its sleep and wake calls (:class:`~contracts.engine_calls.EngineCalls`) may be a
group's only member: the group then puts it to sleep and wakes it by making those calls on the
replica's address, not through the repository's unload and load. Such a server speaks neither
the repository index nor Ember's status pipe, and does not wake itself for a request, so:

* the level it is at is what the last call that succeeded left it at, booked here (awake until
  a call says otherwise), and nothing waits for the server to say it;
* a request that finds it asleep waits for its wake before it is relayed; the requests that
  come meanwhile share that one wake, which runs to its end even if they all leave;
* one call sequence at a time per replica: a wake asked while a sleep is under way follows it;
* a sleep deeper than the level it sleeps at wakes it first (vLLM ignores a sleep while it
  sleeps), then puts it down at the deeper level.

A call that does not answer 2xx is a :class:`~activator.replica_client.Refusal` naming the call,
and leaves the books where they were.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from activator.replica_client import Refusal, ReplicaClient
from activator.tiered import Level
from contracts.engine_calls import EngineCall, EngineCalls
from contracts.replica import SleepLevel

CALL_TIMEOUT_S = 300.0  # one call: it may move or reload a model's weights

Key = tuple[int, str]  # (replica id, member)
#: ``woke(key, level, seconds)``: a wake succeeded, from ``level``, in ``seconds``
Woke = Callable[[Key, Level, float], None]
Spawn = Callable[[Coroutine[Any, Any, Refusal | None], str], "asyncio.Task[Refusal | None]"]


class EngineSleep:
    """The levels of a group's command-engine members on its replicas, and their calls."""

    def __init__(
        self,
        calls: Mapping[str, EngineCalls],
        client: ReplicaClient,
        *,
        woke: Woke,
        spawn: Spawn,
    ) -> None:
        self._calls = dict(calls)
        self._client = client
        self._woke, self._spawn = woke, spawn
        self._levels: dict[Key, Level] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._waking: dict[Key, asyncio.Task[Refusal | None]] = {}

    def __contains__(self, member: object) -> bool:
        """Whether ``member`` sleeps and wakes through its engine's calls."""
        return member in self._calls

    def levels(self, member: str) -> frozenset[Level]:
        """The levels ``member``'s engine has sleep calls for."""
        return frozenset(Level(level.value) for level in self._calls[member].levels)

    def at(self, key: Key) -> Level:
        """Where the last call that succeeded left it (awake before any)."""
        return self._levels.get(key, Level.HOT)

    def awake(self, key: Key) -> bool:
        """Awake, and no call under way: a request may be relayed at once."""
        lock = self._locks.get(key)
        return self.at(key) is Level.HOT and (lock is None or not lock.locked())

    def forget(self, rid: int) -> None:
        """A replica gone: its books go with it."""
        for books in (self._levels, self._locks, self._waking):
            for key in [k for k in books if k[0] == rid]:
                del books[key]

    async def sleep(self, url: str, key: Key, level: SleepLevel) -> Refusal | None:
        """Put the engine at ``url`` to sleep at ``level``: None once it has (or already
        sleeps there or deeper), else why not."""
        async with self._lock(key):
            now = self.at(key)
            if now.depth >= Level(level.value).depth:
                return None
            if now is not Level.HOT:  # deeper from a sleep: awake first
                refusal = await self._wake_locked(url, key, booked=False)
                if refusal is not None:
                    return refusal
            refusal = await self._make(url, self._calls[key[1]].sleep_calls(level))
            if refusal is None:
                self._levels[key] = Level(level.value)
            return refusal

    async def wake(self, url: str, key: Key) -> Refusal | None:
        """Wake the engine at ``url`` if it sleeps (after a call under way): None once it is
        awake, else why not. Callers at once share one wake, which runs on if they leave."""
        task = self._waking.get(key)
        if task is None or task.done():
            task = self._spawn(self._wake(url, key), f"wake-{key[1]}-{key[0]}")
            self._waking[key] = task
        return await asyncio.shield(task)

    async def _wake(self, url: str, key: Key) -> Refusal | None:
        async with self._lock(key):
            return await self._wake_locked(url, key, booked=True)

    async def _wake_locked(self, url: str, key: Key, *, booked: bool) -> Refusal | None:
        """The wake calls from where it sleeps; ``booked``: a wake of its own (told to the
        group, which measures it), not the first half of a deeper sleep."""
        level = self.at(key)
        if level is Level.HOT:
            return None
        started = time.perf_counter()
        on_replica = level.on_replica
        assert on_replica is not None
        refusal = await self._make(url, self._calls[key[1]].wake_calls(on_replica))
        if refusal is not None:
            return refusal
        self._levels[key] = Level.HOT
        if booked:
            self._woke(key, level, time.perf_counter() - started)
        return None

    async def _make(self, url: str, calls: tuple[EngineCall, ...]) -> Refusal | None:
        for call in calls:
            refusal = await self._client.call(url, call, CALL_TIMEOUT_S)
            if refusal is not None:
                return Refusal(refusal.status, f"{call}: {refusal.detail}")
        return None

    def _lock(self, key: Key) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock
