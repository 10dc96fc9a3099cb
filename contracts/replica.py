"""The replica's wire contract: what an ``ember serve`` process tells the activator, and how.

A replica started by the activator gets a status channel (``ember serve --status-fd N``: a pipe
the activator reads) and writes one JSON object per line to it, each a :class:`ReplicaEvent`:

- ``standby``: a warm-pool interpreter has done its imports (what they cost, what they left);
- ``listening``: the server's address;
- ``model``: a model's state changed (``LOADING``, ``READY``, ``SLEEPING``, ``UNAVAILABLE``), with
  the reason, the kind of failure when its load failed, and the load's phases once it is ready.

The same :class:`ModelStatus` (state, reason, failure kind) is what the runtime's repository index
(``POST /v2/repository/index``) carries for each model, so a scaler that cannot read a pipe (a
Knative Service) learns a failed load over HTTP with the same words. Parsed once, here: nothing
reads another component's log lines or metrics text.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


class FailureKind(enum.StrEnum):
    """Why a model could not load: a kind the activator acts on without reading the reason."""

    WEIGHTS_MISSING = "weights_missing"  # a weights file, object or manifest is not there
    WEIGHTS_CORRUPT = "weights_corrupt"  # a checksum, a header or a size does not match
    STORE_UNAVAILABLE = "store_unavailable"  # the object store failed or timed out
    DISK_FULL = "disk_full"  # the local tier has no room
    OUT_OF_MEMORY = "out_of_memory"  # the weights do not fit the device (or host) memory
    BAD_CONFIG = "bad_config"  # a class path that does not import, options that do not fit
    LOAD_FAILED = "load_failed"  # anything else the handler raised


class ContractViolation(ValueError):
    """A status line that is not one of the contract's events."""


@dataclass(frozen=True)
class Standby:
    preload_s: float
    imports_s: float
    threads: int
    cuda_initialized: bool
    kind: Literal["standby"] = "standby"


@dataclass(frozen=True)
class Listening:
    url: str
    kind: Literal["listening"] = "listening"


# SLEEPING: loaded but put away (weights on the host, or dropped to disk); it still serves, a
# request wakes it. Not a failure: ``failure`` stays None and the reason names the level.
ModelState = Literal["UNAVAILABLE", "LOADING", "READY", "UNLOADING", "SLEEPING"]
MODEL_STATES: tuple[ModelState, ...] = (
    "UNAVAILABLE",
    "LOADING",
    "READY",
    "UNLOADING",
    "SLEEPING",
)


SleepLevelName = Literal["host", "disk"]
SLEEP_LEVELS: tuple[SleepLevelName, ...] = ("host", "disk")


@dataclass(frozen=True)
class ModelStatus:
    model: str
    state: ModelState
    reason: str = ""
    failure: FailureKind | None = None  # set only when a load failed
    phases: dict[str, float] = field(default_factory=dict)  # seconds, once READY
    level: SleepLevelName | None = None  # the level it sleeps at, while SLEEPING
    kind: Literal["model"] = "model"


ReplicaEvent = Standby | Listening | ModelStatus


def encode(event: ReplicaEvent) -> bytes:
    """One event as one line (JSON, newline-terminated)."""
    return (json.dumps(asdict(event), separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> ReplicaEvent:
    """One status line back into its event; :class:`ContractViolation` if it is not one."""
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        raise ContractViolation(f"a status line that is not JSON: {_clip(line)}") from None
    if not isinstance(raw, dict):
        raise ContractViolation(f"a status line that is not an object: {_clip(line)}")
    kind = raw.get("kind")
    try:
        if kind == "standby":
            return Standby(
                _number(raw["preload_s"]),
                _number(raw["imports_s"]),
                _int(raw["threads"]),
                _bool(raw["cuda_initialized"]),
            )
        if kind == "listening":
            return Listening(_str(raw["url"]))
        if kind == "model":
            return model_status(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractViolation(f"a malformed {kind} line ({exc}): {_clip(line)}") from None
    raise ContractViolation(f"an unknown kind of status line: {_clip(line)}")


def model_status(raw: dict[str, Any]) -> ModelStatus:
    """A :class:`ModelStatus` from its JSON form (a status line, or a repository index entry)."""
    state = raw["state"]
    if state not in MODEL_STATES:
        raise ValueError(f"state {state!r}")
    failure = raw.get("failure")
    phases = raw.get("phases") or {}
    if not isinstance(phases, dict):
        raise TypeError("phases must be an object")
    level = raw.get("level")
    if level is not None and level not in SLEEP_LEVELS:
        raise ValueError(f"level {level!r}")
    return ModelStatus(
        model=_str(raw.get("model", raw.get("name"))),
        state=state,
        reason=_str(raw.get("reason") or ""),
        failure=None if failure is None else FailureKind(failure),
        phases={_str(k): _number(v) for k, v in phases.items()},
        level=level,
    )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _number(value: object) -> float:
    # JSON's true and false are not numbers, nor is a string of digits
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _clip(line: bytes | str) -> str:
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    return text.strip()[:200]
