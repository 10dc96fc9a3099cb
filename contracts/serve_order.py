"""A serve order: what one replica must serve, and how, typed from the scaler to the server.

The local scaler starts a replica either as a fresh ``ember serve`` process or by handing a warm
standby (``ember serve --standby``, :mod:`runtime.standby`) its order on stdin. Both are told the
same :class:`ServeOrder`: a standby receives it as one JSON line (:func:`encode_order`,
:func:`decode_order`) and builds its server from it directly; only a fresh process, and a
Knative Service's container, are given it as ``ember serve`` arguments, rendered by
:func:`serve_argv` alone. A line that is not an order is a :class:`~contracts.replica.
ContractViolation` saying what is wrong with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from contracts.logs import LOG_FORMATS, LOG_LEVELS, LogFormat, LogLevel
from contracts.replica import ContractViolation, clip


@dataclass(frozen=True)
class ServeOrder:
    """What a replica must serve: its model config files, where it listens, its weight tier and
    memory budgets, how it logs and what a failed load does. The defaults are ``ember serve``'s;
    what the runtime does not read from an order (timeouts, request limits) keeps its default.
    Values are checked by the server's own settings; the order only holds them, typed."""

    configs: tuple[Path, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    cache_dir: Path | None = None  # None: $EMBER_CACHE_DIR, else ~/.cache/ember
    cache_budget_gb: float | None = None
    device_memory_budget: int | None = None  # bytes; None: what the CUDA device has free
    host_memory_budget: int | None = None  # bytes; None: no limit
    load_on_demand: bool = False  # a group's replica: register the models, load on request
    exit_on_load_failure: bool = False  # a Knative Service: a failed load ends the pod
    stay_on_load_failure: bool = False  # the activator's replicas: stay up, unready
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"


def serve_argv(order: ServeOrder) -> list[str]:
    """The order as ``ember serve`` arguments, for a fresh process: the one place they are made."""
    argv = [arg for path in order.configs for arg in ("--config", str(path))]
    argv += ["--host", order.host, "--port", str(order.port)]
    if order.cache_dir is not None:
        argv += ["--cache-dir", str(order.cache_dir)]
    if order.cache_budget_gb is not None:
        argv += ["--cache-budget-gb", _number(order.cache_budget_gb)]
    if order.device_memory_budget is not None:
        argv += ["--device-memory-budget", str(order.device_memory_budget)]
    if order.host_memory_budget is not None:
        argv += ["--host-memory-budget", str(order.host_memory_budget)]
    for flag in ("load_on_demand", "exit_on_load_failure", "stay_on_load_failure"):
        if getattr(order, flag):
            argv.append("--" + flag.replace("_", "-"))
    if order.log_level != ServeOrder.log_level:
        argv += ["--log-level", order.log_level]
    if order.log_format != ServeOrder.log_format:
        argv += ["--log-format", order.log_format]
    return argv


def encode_order(order: ServeOrder) -> bytes:
    """The order as one JSON line, for a standby's stdin."""
    raw: dict[str, Any] = {}
    for f in fields(order):
        value = getattr(order, f.name)
        if f.name == "configs":
            value = [str(path) for path in value]
        elif isinstance(value, Path):
            value = str(value)
        raw[f.name] = value
    return (json.dumps(raw, separators=(",", ":")) + "\n").encode()


def decode_order(line: bytes | str) -> ServeOrder:
    """One JSON line back into its order; :class:`ContractViolation` saying what is wrong with
    it when it is not one (not JSON, not an object, a key unknown or missing, a value of the
    wrong type). A key left out takes its default, except ``configs``."""
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        raise ContractViolation(f"a serve order that is not JSON: {clip(line)}") from None
    if not isinstance(raw, dict):
        raise ContractViolation(f"a serve order is a JSON object, not {clip(line)}")
    known = {f.name for f in fields(ServeOrder)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ContractViolation(f"a serve order with unknown keys {unknown}: {clip(line)}")
    try:
        return ServeOrder(**{key: _CHECKS[key](value) for key, value in raw.items()})
    except TypeError as exc:  # a key missing, or a value of the wrong type
        raise ContractViolation(f"a malformed serve order ({exc}): {clip(line)}") from None


def _configs(value: object) -> tuple[Path, ...]:
    if not isinstance(value, list) or not value:
        raise TypeError("configs must be a non-empty list of paths")
    return tuple(Path(_str(path, "configs")) for path in value)


def _str(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string, not {type(value).__name__}")
    return value


def _int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be an integer, not {type(value).__name__}")
    return value


def _float(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number, not {type(value).__name__}")
    return float(value)


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be true or false, not {type(value).__name__}")
    return value


def _choice(value: object, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise TypeError(f"{key} must be one of {', '.join(choices)}, not {value!r:.40}")
    return _str(value, key)


def _optional(check: Any, key: str) -> Any:
    return lambda value: None if value is None else check(value, key)


_CHECKS: dict[str, Any] = {
    "configs": _configs,
    "host": lambda v: _str(v, "host"),
    "port": lambda v: _int(v, "port"),
    "cache_dir": lambda v: None if v is None else Path(_str(v, "cache_dir")),
    "cache_budget_gb": _optional(_float, "cache_budget_gb"),
    "device_memory_budget": _optional(_int, "device_memory_budget"),
    "host_memory_budget": _optional(_int, "host_memory_budget"),
    "load_on_demand": lambda v: _bool(v, "load_on_demand"),
    "exit_on_load_failure": lambda v: _bool(v, "exit_on_load_failure"),
    "stay_on_load_failure": lambda v: _bool(v, "stay_on_load_failure"),
    "log_level": lambda v: _choice(v, "log_level", LOG_LEVELS),
    "log_format": lambda v: _choice(v, "log_format", LOG_FORMATS),
}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
