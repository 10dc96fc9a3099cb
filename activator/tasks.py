"""The activator's long-lived tasks, owned by its lifespan: started here, all stopped at shutdown.

A :class:`TaskSet` is a task group for background work that must not take its siblings down:
a task that fails is logged (and forgotten), not propagated; :meth:`TaskSet.aclose` cancels what
is left and waits for it. Nothing the activator starts outlives it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("ember.activator")
T = TypeVar("T")


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task this set owns; refused once the set is closing."""
        if self.closed:
            coro.close()
            raise RuntimeError("the task set is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel every task still running and wait for all of them."""
        self.closed = True
        while self._tasks:
            pending = list(self._tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> TaskSet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
