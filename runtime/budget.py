"""Several models on one device under a memory budget: which hot models sleep to make room.

A model's footprint is the bytes its weights hold on its device, measured once it has loaded
(:class:`runtime.handlers.base.Measures`). The hot models' footprints stay within the budget: a
model that is wanted but does not fit is woken only after the least recently used hot models
were put to sleep (:mod:`runtime.sleep`) until it fits. The repository makes every such decision
under :attr:`DeviceBudget.lock`, so swaps happen one at a time. This module keeps the books and
picks; the repository does the sleeping and waking.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Collection

from contracts.replica import FailureKind
from contracts.sizes import human
from runtime.errors import ModelNotReady
from runtime.handlers.base import HandlerLoadError
from runtime.metrics import RuntimeMetrics
from runtime.sleep import SleepLevel


class OverBudget(HandlerLoadError):
    """A model's footprint alone is more than the whole budget: it can never be hot."""

    failure = FailureKind.OUT_OF_MEMORY


class DeviceBudget:
    """The books of one device's budget: footprints, which models are hot, when each was used.

    ``limit`` None: no budget (models are only counted). ``level``: how far a model put away
    for room sleeps.
    """

    def __init__(
        self,
        limit: int | None,
        *,
        metrics: RuntimeMetrics | None = None,
        level: SleepLevel = SleepLevel.HOST,
    ) -> None:
        self.limit = limit
        self.level = level
        self.lock = asyncio.Lock()
        self._metrics = metrics
        self._footprints: dict[str, int] = {}
        self._hot: set[str] = set()
        self._last_use: dict[str, int] = {}
        self._ticks = itertools.count()  # an order of uses, not a time: no two uses tie
        self._publish()

    def set_limit(self, limit: int | None) -> None:
        self.limit = limit
        self._publish()

    @contextlib.asynccontextmanager
    async def deciding(self) -> AsyncIterator[None]:
        """Held while a model is loaded, woken or put to sleep for room (no-op without a limit,
        so that models without a budget load side by side)."""
        if self.limit is None:
            yield
            return
        async with self.lock:
            yield

    def touch(self, name: str) -> None:
        """``name`` was just used: it is the last the least-recently-used order picks."""
        self._last_use[name] = next(self._ticks)

    def footprint(self, name: str) -> int | None:
        return self._footprints.get(name)

    def measured(self, name: str, footprint: int) -> None:
        """Record a freshly loaded model's footprint; OverBudget if it can never be hot."""
        if self.limit is not None and footprint > self.limit:
            raise OverBudget(
                f"model '{name}' needs {human(footprint)} of device memory, more than the whole "
                f"device memory budget of {human(self.limit)}"
            )
        self._footprints[name] = footprint

    def mark(self, name: str, *, hot: bool) -> None:
        """Whether ``name``'s weights are on the device now (loaded or woken: hot)."""
        if hot:
            self._hot.add(name)
            self.touch(name)
        else:
            self._hot.discard(name)
        self._publish()

    def hot_bytes(self, *, without: str | None = None) -> int:
        return sum(self._footprints.get(n, 0) for n in self._hot if n != without)

    def fits(self, name: str) -> bool:
        """Whether ``name`` can be hot beside the other hot models."""
        need = self._footprints.get(name, 0)
        return self.limit is None or self.hot_bytes(without=name) + need <= self.limit

    def victims(self, name: str, *, can_sleep: Collection[str]) -> list[str]:
        """The hot models to put to sleep, least recently used first, for ``name`` to fit.

        ``can_sleep``: the hot models that can sleep now; ModelNotReady when they are not enough.
        """
        if self.limit is None:
            return []
        need = self._footprints.get(name, 0)
        over = self.hot_bytes(without=name) + need - self.limit
        picked: list[str] = []
        others = sorted((n for n in self._hot if n != name), key=self._last_use_of)
        for other in others:
            if over <= 0:
                break
            if other in can_sleep:
                picked.append(other)
                over -= self._footprints.get(other, 0)
        if over > 0:
            stuck = sorted(n for n in self._hot if n != name and n not in can_sleep)
            raise ModelNotReady(
                f"model '{name}' needs {human(need)} of device memory and the budget of "
                f"{human(self.limit)} has no room: {', '.join(stuck) or 'no model'} cannot "
                "sleep now"
            )
        return picked

    def _last_use_of(self, name: str) -> int:
        return self._last_use.get(name, -1)

    def _publish(self) -> None:
        if self._metrics is None:
            return
        self._metrics.device_hot_bytes.set(self.hot_bytes())
        self._metrics.device_budget_bytes.set(self.limit if self.limit is not None else 0)


def detect_limit(devices: Collection[str]) -> int | None:
    """The default budget: what the CUDA device has free now, when some model uses one; None
    (no budget) on the CPU. Blocking (it may initialise CUDA): run it in a thread."""
    if not any(d == "auto" or d.startswith("cuda") for d in devices):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info()[0])
