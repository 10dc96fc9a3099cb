"""Putting a loaded torch module's weights away and back (the sleep levels of ``runtime.sleep``).

``host``: every tensor goes to host memory, pinned when it comes from a CUDA device (so the wake
is one asynchronous copy per tensor); on the CPU the tensors stay as they are. ``disk``: the
tensors the weights file provided become meta placeholders (no memory; views of the tier file
are unmapped, the page cache keeps the file) and the others go to the host as for ``host``; the
wake re-reads the file into the kept module. Tied parameters stay tied both ways: placeholders
are made once per tensor, and a tied module is woken through the copying path, as it was loaded.

:class:`TorchWeights` is what both torch handlers hold: their module once loaded, its device,
and its sleep, wake, measure and unload.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from runtime.handlers.base import HandlerLoadError
from runtime.handlers.torch_util import adopts, load_state
from runtime.sleep import SleepLevel


def _tables(module: nn.Module) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(prefix, table)`` for every parameter and buffer table of the module's tree."""
    for path, sub in module.named_modules(remove_duplicate=False):
        prefix = f"{path}." if path else ""
        yield prefix, sub._parameters
        yield prefix, sub._buffers


def _replace(module: nn.Module, make: Callable[[str, torch.Tensor], torch.Tensor | None]) -> None:
    """Swap each tensor for ``make(name, tensor)`` (None: keep it), once per distinct tensor."""
    made: dict[int, torch.Tensor | None] = {}  # by the old tensor's id: one swap per tie
    old: list[torch.Tensor] = []  # alive until the end, so no id is reused meanwhile
    for prefix, table in _tables(module):
        for name, t in list(table.items()):
            if t is None:
                continue
            if id(t) not in made:
                new = make(prefix + name, t)
                if new is not None and isinstance(t, nn.Parameter):
                    new = nn.Parameter(new, requires_grad=t.requires_grad)
                made[id(t)] = new
                old.append(t)
            if made[id(t)] is not None:
                table[name] = made[id(t)]


def _to_host(name: str, t: torch.Tensor) -> torch.Tensor | None:
    if t.is_meta or t.device.type == "cpu":
        return None
    host = torch.empty_like(t, device="cpu", pin_memory=t.device.type == "cuda")
    host.copy_(t, non_blocking=True)
    return host


def device_bytes(module: nn.Module, *, device: str) -> int:
    """Bytes the module's distinct parameters and buffers hold on ``device`` (ties count once)."""
    kind = torch.device(device).type
    seen: set[int] = set()
    total = 0
    for _, table in _tables(module):
        for t in table.values():
            if t is None or id(t) in seen or t.is_meta or t.device.type != kind:
                continue
            seen.add(id(t))
            total += t.nbytes
    return total


def sleep_module(module: nn.Module, level: SleepLevel, *, file_keys: Collection[str]) -> None:
    """Put ``module``'s weights away at ``level``; ``file_keys`` name the tensors its file has."""
    if level is SleepLevel.DISK:
        wanted = set(file_keys)
        _replace(
            module,
            lambda name, t: torch.empty_like(t, device="meta") if name in wanted else None,
        )
    _replace(module, _to_host)
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()  # the copies out finish before the device memory is reused
        torch.cuda.empty_cache()


def wake_module(
    module: nn.Module,
    *,
    device: str,
    state: Mapping[str, torch.Tensor] | None,
    what: str,
) -> None:
    """Bring ``module`` back onto ``device``; ``state`` (the file, re-read) refills a ``disk``."""
    if state is not None:
        if not adopts(module, state):  # copying into a placeholder would be a no-op
            _replace(module, lambda _, t: torch.empty_like(t, device=device) if t.is_meta else None)
        try:
            load_state(module, state, strict=False)
        except RuntimeError as exc:
            raise HandlerLoadError(f"weights do not fit {what} any more: {exc}") from exc
        for prefix, table in _tables(module):
            for name, t in table.items():
                if t is not None and t.is_meta:
                    raise HandlerLoadError(f"{prefix + name!r} is not in the weights file now")
    if torch.device(device).type != "cpu":
        target = torch.empty(0, device=device).device  # "cuda" resolved to "cuda:0"
        _replace(
            module, lambda _, t: t.to(target, non_blocking=True) if t.device != target else None
        )
        torch.cuda.synchronize()


class TorchWeights:
    """A torch handler's module and what sleep, wake and unload do to its weights.

    The handler sets ``device`` before it loads, hands the loaded module over with :meth:`adopt`
    (with the names of the tensors its weights file provided), and delegates ``sleep``, ``wake``,
    ``device_bytes`` and ``unload`` here. ``reread`` reads the weights file again onto the
    device, keyed as the module names them: what a wake from ``disk`` refills the module with.
    ``what`` names the module in errors.
    """

    def __init__(self, *, what: str, reread: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        self.what = what
        self._reread = reread
        self.device = "cpu"
        self.module: nn.Module | None = None
        self.file_keys: frozenset[str] = frozenset()  # the tensors the weights file provided
        self.asleep: SleepLevel | None = None

    def adopt(self, module: nn.Module, *, file_keys: Collection[str]) -> None:
        """Hold ``module``, just loaded on :attr:`device` from a file with ``file_keys``."""
        self.module = module
        self.file_keys = frozenset(file_keys)
        self.asleep = None

    def sleep(self, level: SleepLevel) -> None:
        assert self.module is not None, "sleep before load"
        sleep_module(self.module, level, file_keys=self.file_keys)
        self.asleep = level

    def wake(self) -> None:
        assert self.module is not None, "wake before load"
        state = self._reread() if self.asleep is SleepLevel.DISK else None
        wake_module(self.module, device=self.device, state=state, what=self.what)
        self.asleep = None

    def device_bytes(self) -> int:
        assert self.module is not None, "measured before load"
        return device_bytes(self.module, device=self.device)

    def unload(self) -> None:
        self.module = None
        self.asleep = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
