"""Several models on one device under a memory budget: which hot models sleep to make room.

A model's footprint is the bytes its weights hold on its device, measured once it has loaded
(:class:`runtime.handlers.base.Measures`). The hot models' footprints stay within the budget: a
model that is wanted but does not fit is woken only after the least recently used hot models
were put to sleep (:mod:`runtime.sleep`) until it fits. The repository makes every such decision
under :attr:`DeviceBudget.lock`, so swaps happen one at a time. This module keeps the books and
picks; the repository does the sleeping and waking.

A host memory budget bounds what the models sleeping at level ``host`` hold in host memory (their
footprints). A model put to sleep for room sleeps at ``host`` while it fits beside the other host
sleepers; past the budget the least recently used host sleepers go down to ``disk`` first
(:meth:`DeviceBudget.host_victims`), and a model larger than the whole host budget sleeps at
``disk`` itself (:meth:`DeviceBudget.room_level`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Collection

from contracts.replica import FailureKind
from contracts.sizes import human
from runtime.config import ModelConfig
from runtime.errors import ConfigError, ModelNotReady
from runtime.handlers.base import HandlerLoadError
from runtime.metrics import RuntimeMetrics
from runtime.sleep import SleepLevel


class OverBudget(HandlerLoadError):
    """A model's footprint alone is more than the whole budget: it can never be hot."""

    failure = FailureKind.OUT_OF_MEMORY


class DeviceBudget:
    """The books of one device's budget: footprints, which models are hot, when each was used.

    ``limit`` None: no budget (models are only counted). ``level``: how far a model put away
    for room sleeps. ``host_limit``: the bytes the models sleeping at ``host`` may hold in host
    memory (None: no host budget).
    """

    def __init__(
        self,
        limit: int | None,
        *,
        metrics: RuntimeMetrics | None = None,
        level: SleepLevel = SleepLevel.HOST,
        host_limit: int | None = None,
    ) -> None:
        self.limit = limit
        self.level = level
        self.host_limit = host_limit
        self.lock = asyncio.Lock()
        self._metrics = metrics
        self._footprints: dict[str, int] = {}
        self._hot: set[str] = set()
        self._at_host: set[str] = set()  # sleeping at level host: their weights in host memory
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

    def estimate(self, name: str, footprint: int) -> None:
        """A guess of a model's footprint before its first load (the size of its weight files),
        so that room is made for it first; :meth:`measured` replaces it."""
        if name not in self._footprints:
            self._footprints[name] = min(footprint, self.limit or footprint)

    def measured(self, name: str, footprint: int) -> None:
        """Record a freshly loaded model's footprint; OverBudget if it can never be hot."""
        if self.limit is not None and footprint > self.limit:
            raise OverBudget(
                f"model '{name}' needs {human(footprint)} of device memory, more than the whole "
                f"device memory budget of {human(self.limit)}"
            )
        self._footprints[name] = footprint

    def mark(self, name: str, *, hot: bool, at_host: bool = False) -> None:
        """Whether ``name``'s weights are on the device now (loaded or woken: hot), or, when
        not, in host memory (asleep at level host)."""
        if hot:
            self._hot.add(name)
            self.touch(name)
        else:
            self._hot.discard(name)
        if at_host and not hot:
            self._at_host.add(name)
        else:
            self._at_host.discard(name)
        self._publish()

    def host_bytes(self, *, without: str | None = None) -> int:
        """What the models asleep at level host hold in host memory."""
        return sum(self._footprints.get(n, 0) for n in self._at_host if n != without)

    def room_level(self, name: str, *, asked: SleepLevel | None = None) -> SleepLevel:
        """How far ``name`` sleeps: ``asked`` (a sleep by request), else :attr:`level` (a sleep
        for room), but ``disk`` when its footprint alone is more than the whole host budget."""
        need = self._footprints.get(name, 0)
        if self.host_limit is not None and need > self.host_limit:
            return SleepLevel.DISK
        return self.level if asked is None else asked

    def host_victims(
        self, name: str, *, waking: str | None = None, level: SleepLevel | None = None
    ) -> list[str]:
        """The host sleepers to send down to disk, least recently used first, for ``name`` to
        sleep at host within the host budget (none without one). ``waking``: the model that
        ``name`` makes room for, which leaves host memory as it wakes; ``level``: where ``name``
        goes (default: where a sleep for room sends it)."""
        where = self.room_level(name) if level is None else level
        if self.host_limit is None or where is not SleepLevel.HOST:
            return []
        staying = self._at_host - {name, waking}
        over = sum(self._footprints.get(n, 0) for n in staying)
        over += self._footprints.get(name, 0) - self.host_limit
        picked: list[str] = []
        for other in sorted(staying, key=self._last_use_of):
            if over <= 0:
                break
            picked.append(other)
            over -= self._footprints.get(other, 0)
        return picked

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
        self._metrics.host_sleeping_bytes.set(self.host_bytes())
        self._metrics.host_budget_bytes.set(self.host_limit if self.host_limit is not None else 0)


_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def estimate_footprint(config: ModelConfig) -> int | None:
    """A model's footprint before its first load: the bytes of the weight files in its local
    source directory (what the torch handlers put on the device); None when it has no local
    files yet (an ``s3://`` source is not localized before its load: room is then made after
    it) or none that look like weights. Blocking."""
    try:
        source = config.local_source()
    except ConfigError:
        return None
    try:
        if source.is_file():
            return source.stat().st_size
        for pattern in _WEIGHT_FILES:  # safetensors first: a checkpoint in two formats counts once
            total = sum(f.stat().st_size for f in source.glob(pattern) if f.is_file())
            if total:
                return total
    except OSError:
        return None
    return None


def detect_limit(devices: Collection[str]) -> int | None:
    """The default budget: what the CUDA device has free now, when some model uses one; None
    (no budget) on the CPU. Blocking (it may initialise CUDA): run it in a thread."""
    if not any(d == "auto" or d.startswith("cuda") for d in devices):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info()[0])
