"""Build a torch module without initialising its parameters, then give it the loaded weights.

A constructor initialises every parameter (``reset_parameters``: kaiming, normal, ...) on the
CPU, and the weights file then replaces every value: for a 2 GiB fp16 module that init was the
whole load phase (about 6 s), and 16 ``nn.Linear(4096, 4096)`` in fp16 take 1.6 s to build on a
2-core CPU against 2 ms without it. So the module is built with its parameters on the ``meta``
device (shapes and dtypes, no memory, init at no cost) and adopts the file's tensors
(``load_state_dict(assign)``).

Why a parameter-registration hook and not ``with torch.device("meta")``: the hook swaps each
``Parameter`` for a meta one as the constructor registers it and leaves buffers alone. Buffers
must stay real: the non-persistent ones (position ids, rotary frequencies) are not in any file,
and their only values are the ones the constructor computed. A ``Parameter`` subclass (lazy,
quantised) is left real too: its constructor semantics are its own.

Why the hook is installed once and never removed: torch keeps these hooks in one process-wide
dict that every ``register_parameter`` iterates; adding or removing one while another thread is
building a module can make that thread's iteration fail. Models load side by side in threads, so
the hook stays and acts only in a thread that is inside :func:`_parameters_on_meta` (a
thread-local flag); elsewhere it is one attribute read per parameter.

Why parameters absent from the file are initialised through their module's ``reset_parameters``:
that is where torch's own modules keep the init their constructors run. Every other tensor of
that module is shadowed by a meta placeholder for the call, so a reset cannot touch loaded
weights or buffers (a view of the tier file may be read-only memory); a reset that leaves the
parameter unwritten (its version counter unchanged) or replaces it does not count.

Why ``normal_`` is skipped on meta tensors: a meta tensor has no values to fill, but torch runs
``normal_`` on meta through a Python reference whose first call imports ``torch._dynamo`` (about
a second on a 2-core CPU, on every replica's cold start: ``nn.Embedding`` initialises with it).
A torch-function mode, active only around the build in the building thread, returns the tensor
as it is instead.

Why everything can fall back: a constructor may need real values (``.item()``, a buffer computed
from a parameter), a module may have no ``reset_parameters``. Then the module is built as before,
fully initialised, with the reason logged; loading is slower, never wrong.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from runtime.handlers.base import HandlerLoadError
from runtime.handlers.torch_util import adopts, load_state

log = logging.getLogger("ember.runtime")

_building = threading.local()
_install_lock = threading.Lock()
_installed = False


class _Unsupported(Exception):
    """This module cannot be loaded without initialising it; the reason says why."""


def _to_meta(module: nn.Module, name: str, param: Any) -> nn.Parameter | None:
    if not getattr(_building, "active", False):
        return None
    if type(param) is not nn.Parameter or param.is_meta:  # a subclass, or a tie to one swapped
        return None
    return nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)


_NORMAL_INITS = frozenset(
    {
        torch.Tensor.normal_,
        nn.init.normal_,
        nn.init.xavier_normal_,
        nn.init.kaiming_normal_,
        nn.init.trunc_normal_,
    }
)


class _NoFillOnMeta(TorchFunctionMode):
    """A normal init of a meta tensor returns it as it is (there is nothing to fill).

    ``torch.nn.init``'s functions reach the mode themselves (before ``Tensor.normal_``, which the
    mode does not see again while it handles them), so they are caught by name too.
    """

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _NORMAL_INITS:
            tensor = args[0] if args else kwargs.get("tensor")  # init's pass it by keyword
            if getattr(tensor, "is_meta", False):
                return tensor
        return func(*args, **kwargs)


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    global _installed
    with _install_lock:
        if not _installed:
            # torch's annotation says the hook returns None; it takes a returned replacement
            nn.modules.module.register_module_parameter_registration_hook(_to_meta)  # type: ignore[arg-type]
            _installed = True
    previous = getattr(_building, "active", False)
    _building.active = True
    try:
        with _NoFillOnMeta():
            yield
    finally:
        _building.active = previous


def load_module(
    build: Callable[[], Any],
    state: Mapping[str, torch.Tensor],
    *,
    device: str,
    strict: bool,
    init_missing: bool,
    what: str,
) -> nn.Module:
    """The module ``build()`` makes, holding ``state``'s tensors, on ``device``, in eval mode.

    ``strict``: a tensor the module has no place for is an error. ``init_missing``: a parameter
    absent from ``state`` gets its module's own initialisation; otherwise it is an error. A
    parameter tied to one in ``state`` is not absent. ``what`` names the module in messages.
    """
    try:
        with _parameters_on_meta():
            module = build()
    except Exception as exc:
        log.info(
            "%s is built with initialised parameters: its constructor fails without them (%s: %s)",
            what,
            type(exc).__name__,
            exc,
        )
    else:
        _check_fit(module, state, strict=strict, init_missing=init_missing, what=what)
        try:
            return _finish(_adopt(module, state, device=device, what=what), device)
        except _Unsupported as exc:
            log.warning("%s is built with initialised parameters: %s", what, exc)
    try:
        module = build()
    except Exception as exc:
        raise HandlerLoadError(f"{what}(**kwargs) failed: {exc}") from exc
    _check_fit(module, state, strict=strict, init_missing=init_missing, what=what)
    _load(module, state, what)
    return _finish(module, device)


def _check_fit(
    module: Any,
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool,
    init_missing: bool,
    what: str,
) -> None:
    if not isinstance(module, nn.Module):
        raise HandlerLoadError(f"{what} did not build a torch.nn.Module")
    own = module.state_dict(keep_vars=True)
    loaded = {id(own[name]) for name in state if name in own}
    missing = [name for name, t in own.items() if name not in state and id(t) not in loaded]
    unexpected = [name for name in state if name not in own]
    if strict and unexpected:
        lacking = f"; they lack {_some(missing)}" if missing else ""
        raise HandlerLoadError(
            f"weights do not fit {what}: it has no parameters {_some(unexpected)}{lacking}"
        )
    if missing and not init_missing:
        raise HandlerLoadError(f"weights lack parameters: {_some(missing)}")


def _some(names: list[str], shown: int = 8) -> str:
    return str(names) if len(names) <= shown else f"{names[:shown]} and {len(names) - shown} more"


def _load(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        load_state(module, state, strict=False)  # _check_fit said what is missing or extra
    except RuntimeError as exc:
        raise HandlerLoadError(f"weights do not fit {what}: {exc}") from exc


def _adopt(
    module: nn.Module, state: Mapping[str, torch.Tensor], *, device: str, what: str
) -> nn.Module:
    """Load ``state`` into a module built on meta; initialise what it lacks."""
    if not adopts(module, state):
        # the copying path (a cast, tied parameters) copies into real tensors: a copy into a
        # meta one is a no-op
        _materialise(module, device, _meta_parameters(module))
    _load(module, state, what)
    own = module.state_dict(keep_vars=True)
    loaded = {id(own[name]) for name in state if name in own}
    absent = {
        id(p): name
        for name, p in module.named_parameters(remove_duplicate=False)
        if id(p) not in loaded
    }
    if absent:
        _initialise(module, device, absent)
    for name, t in _tensors(module):
        if t.is_meta:
            raise _Unsupported(f"{name!r} is still on the meta device after loading")
    return module


def _finish(module: nn.Module, device: str) -> nn.Module:
    for name, t in _tensors(module):
        if t.is_meta:  # built there by the constructor itself: it has no values to serve
            raise HandlerLoadError(f"parameter {name!r} was left on the meta device")
    return module.to(device).eval()


def _tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return chain(
        module.named_parameters(remove_duplicate=False),
        module.named_buffers(remove_duplicate=False),
    )


def _meta_parameters(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters() if p.is_meta}


def _materialise(module: nn.Module, device: str, which: set[int]) -> None:
    """Give the parameters in ``which`` (by id) uninitialised memory on ``device``, ties kept."""
    made: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        for name, p in sub._parameters.items():
            if p is None or id(p) not in which:
                continue
            if id(p) not in made:
                made[id(p)] = nn.Parameter(
                    torch.empty_like(p, device=device), requires_grad=p.requires_grad
                )
            sub._parameters[name] = made[id(p)]


def _initialise(module: nn.Module, device: str, absent: dict[int, str]) -> None:
    """Initialise the parameters absent from the file as their modules' ``reset_parameters`` do."""
    owners: dict[str, list[str]] = {}
    for name in absent.values():
        path, _, local = name.rpartition(".")
        owners.setdefault(path, []).append(local)
    _materialise(module, device, _meta_parameters(module) & absent.keys())
    for path, names in owners.items():
        owner = module.get_submodule(path)
        label = f"{path or type(module).__name__}"
        reset = getattr(owner, "reset_parameters", None)
        if not callable(reset):
            raise _Unsupported(f"{label} has no reset_parameters() to initialise {names}")
        fresh = {local: owner._parameters[local] for local in names}
        versions = {local: p._version for local, p in fresh.items() if p is not None}
        with _shadowed(owner, keep={id(p) for p in fresh.values()}):
            try:
                reset()
            except Exception as exc:
                raise _Unsupported(
                    f"{label}.reset_parameters() fails without the loaded tensors: {exc}"
                ) from exc
        for local, p in fresh.items():
            if p is None or owner._parameters.get(local) is not p or p._version == versions[local]:
                raise _Unsupported(f"{label}.reset_parameters() does not initialise {local!r}")


@contextmanager
def _shadowed(owner: nn.Module, *, keep: set[int]) -> Iterator[None]:
    """Put a meta placeholder in place of every tensor of ``owner``'s but ``keep``, for a while."""
    saved: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    for sub in owner.modules():
        tables: tuple[dict[str, Any], ...] = (sub._parameters, sub._buffers)
        for table in tables:
            for name, t in table.items():
                if t is None or id(t) in keep or t.is_meta:
                    continue
                saved.append((table, name, t))
                placeholder = torch.empty_like(t, device="meta")
                table[name] = (
                    nn.Parameter(placeholder, requires_grad=t.requires_grad)
                    if isinstance(t, nn.Parameter)
                    else placeholder
                )
    try:
        yield
    finally:
        for table, name, t in saved:
            table[name] = t
