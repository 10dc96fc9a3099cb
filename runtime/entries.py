"""A configured model's entry in the repository: its state, and the handler and scheduler it holds.

:class:`ModelEntry` is what :mod:`runtime.repository` keeps per model and what the data plane
serves from; :func:`discard` releases what a failed load, a failed wake or an unload leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from contracts.replica import FailureKind, ModelState, ModelStatus, SleepLevel
from contracts.stats import ModelStats
from runtime.batching import Scheduler
from runtime.config import ModelConfig
from runtime.handlers.base import ModelHandler

log = logging.getLogger("ember.runtime")


SERVING = frozenset(s for s in ModelState if s.serving)
NOT_LOADED_YET = f"level {SleepLevel.DISK} (not loaded yet)"


@dataclass
class ModelEntry:
    config: ModelConfig
    stats: ModelStats
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = "not loaded"
    failure: FailureKind | None = None  # why the last load failed, while UNAVAILABLE
    handler: ModelHandler | None = None
    scheduler: Scheduler | None = None
    load_seconds: float | None = None
    load_phases: dict[str, float] = field(default_factory=dict)
    release_source: Callable[[], None] | None = None
    wanted: bool = True  # whether the operator wants it loaded (repository load/unload)
    asleep: SleepLevel | None = None  # the level it sleeps at, while SLEEPING
    deferred: bool = False  # registered, not loaded yet (SLEEPING): the first request loads it
    woke: tuple[SleepLevel, float] | None = None  # a wake just done (level, seconds): told once
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def sleep_level(self) -> SleepLevel | None:
        """What the index and the status channel say of its level: only while SLEEPING (not
        loaded yet: ``disk``, what a load on demand costs)."""
        if self.state is not ModelState.SLEEPING:
            return None
        if self.deferred:
            return SleepLevel.DISK
        return self.asleep

    @property
    def can_sleep(self) -> bool:
        """Whether its handler, loaded, can be put to sleep (declared on the handler's class)."""
        return self.handler is not None and self.handler.can_sleep

    def status(self) -> ModelStatus:
        """What the index and the status channel say of it (load phases once READY)."""
        ready = self.state is ModelState.READY
        woke = self.woke if ready else None
        return ModelStatus(
            self.config.name,
            self.state,
            self.reason,
            self.failure,
            dict(self.load_phases) if ready and woke is None else {},
            level=self.sleep_level,
            woke_from=None if woke is None else woke[0],
            wake_s=None if woke is None else woke[1],
        )


async def discard(handler: ModelHandler | None, scheduler: Scheduler | None) -> None:
    """Close a model's scheduler, then unload its handler (a failure to unload is logged)."""
    if scheduler is not None:
        await scheduler.aclose()
    if handler is not None:
        try:
            await asyncio.to_thread(handler.unload)
        except Exception:
            log.exception("unloading a handler failed")
