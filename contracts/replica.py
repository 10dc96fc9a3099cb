"""The replica's wire contract: what an ``ember serve`` process tells the activator, and how.

A replica started by the activator gets a status channel (``ember serve --status-fd N``: a pipe
the activator reads) and writes one JSON object per line to it, each a :class:`ReplicaEvent`:

- ``standby``: a warm-pool interpreter has done its imports (what they cost, what they left);
- ``listening``: the server's address;
- ``model``: a model's state changed (``LOADING``, ``READY``, ``SLEEPING``, ``UNAVAILABLE``), with
  the reason, the kind of failure when its load failed, the load's phases once it is ready, the
  level it sleeps at, and (on the ``READY`` that ends a wake) the level it woke from and the
  seconds the wake took, as the replica measured them.

The same :class:`ModelStatus` (state, reason, failure kind) is what the runtime's repository index
(``POST /v2/repository/index``) carries for each model, so a scaler that cannot read a pipe (a
Knative Service) learns a failed load over HTTP with the same words. Parsed once, here: nothing
reads another component's log lines or metrics text.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
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
    # the modules it was asked to import ahead (``--preload``) that it could not
    missing: tuple[str, ...] = ()
    kind: Literal["standby"] = "standby"


@dataclass(frozen=True)
class Listening:
    url: str
    kind: Literal["listening"] = "listening"


class ModelState(enum.StrEnum):
    """A model's state on a replica. SLEEPING: loaded but put away (weights on the host, or
    dropped to disk); it still serves, a request wakes it. Not a failure: its status's
    ``failure`` stays None and the reason names the level."""

    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    SLEEPING = "SLEEPING"

    @property
    def serving(self) -> bool:
        """It answers a request (a sleeping model wakes for it first)."""
        return self is ModelState.READY or self is ModelState.SLEEPING


class SleepLevel(enum.StrEnum):
    """How far a loaded model is put away, in depth order: ``host`` (weights in host memory),
    then ``disk`` (weights dropped; the files stay). Deeper costs more to wake, frees more."""

    HOST = "host"
    DISK = "disk"

    @property
    def depth(self) -> int:
        """1 for ``host``, 2 for ``disk`` (0 is awake)."""
        return 1 if self is SleepLevel.HOST else 2


MODEL_STATES: tuple[ModelState, ...] = tuple(ModelState)
SLEEP_LEVELS: tuple[SleepLevel, ...] = tuple(SleepLevel)


@dataclass(frozen=True)
class ModelStatus:
    model: str
    state: ModelState
    reason: str = ""
    failure: FailureKind | None = None  # set only when a load failed
    phases: dict[str, float] = field(default_factory=dict)  # seconds, once READY
    level: SleepLevel | None = None  # the level it sleeps at, while SLEEPING
    # on the READY that ends a wake: the level it woke from and the seconds the wake took
    woke_from: SleepLevel | None = None
    wake_s: float | None = None
    # on the READY of a model another server serves (engine: command): the name that server
    # answers to, when it is not the model's own (the activator renames requests to it)
    served_as: str | None = None
    kind: Literal["model"] = "model"

    @property
    def serving(self) -> bool:
        """It answers a request (READY, or SLEEPING: a request wakes it)."""
        return self.state.serving

    @property
    def failed(self) -> bool:
        """Its load (or wake) failed, with a kind of failure: it will not serve by itself."""
        return self.state is ModelState.UNAVAILABLE and self.failure is not None

    @property
    def settled(self) -> bool:
        """A start has nothing more to wait for of it: it serves, or it failed."""
        return self.serving or self.failed


@dataclass(frozen=True)
class Ready:
    """Every expected model serves or failed, and one serves: the replica is ready."""

    serving: tuple[ModelStatus, ...]
    failed: tuple[ModelStatus, ...] = ()


@dataclass(frozen=True)
class Failed:
    """Every expected model failed: the replica will never serve."""

    failed: tuple[ModelStatus, ...]

    def reasons(self) -> str:
        """``model: reason; ...`` for each failed model."""
        return "; ".join(f"{s.model}: {s.reason}" for s in self.failed)


@dataclass(frozen=True)
class Pending:
    """Some expected model has neither served nor failed yet (None: not reported at all)."""

    waiting: tuple[tuple[str, ModelStatus | None], ...]


Readiness = Ready | Failed | Pending


def readiness(statuses: Mapping[str, ModelStatus], expected: Sequence[str]) -> Readiness:
    """Where a replica's start stands, from its models' latest statuses: the one rule the
    runtime, the local scaler and the Knative scaler all apply. No model expected: ready."""
    got = [(name, statuses.get(name)) for name in expected]
    failed = tuple(s for _, s in got if s is not None and s.failed)
    if got and len(failed) == len(got):
        return Failed(failed)
    waiting = tuple((name, s) for name, s in got if s is None or not s.settled)
    if waiting:
        return Pending(waiting)
    serving = tuple(s for _, s in got if s is not None and s.serving)
    return Ready(serving, failed) if serving or not got else Failed(failed)


ReplicaEvent = Standby | Listening | ModelStatus


def encode(event: ReplicaEvent) -> bytes:
    """One event as one line (JSON, newline-terminated)."""
    return (json.dumps(asdict(event), separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> ReplicaEvent:
    """One status line back into its event; :class:`ContractViolation` if it is not one."""
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        raise ContractViolation(f"a status line that is not JSON: {clip(line)}") from None
    if not isinstance(raw, dict):
        raise ContractViolation(f"a status line that is not an object: {clip(line)}")
    kind = raw.get("kind")
    try:
        if kind == "standby":
            return Standby(
                _number(raw["preload_s"]),
                _number(raw["imports_s"]),
                _int(raw["threads"]),
                _bool(raw["cuda_initialized"]),
                tuple(_str(m) for m in _list(raw.get("missing") or [])),
            )
        if kind == "listening":
            return Listening(_str(raw["url"]))
        if kind == "model":
            return model_status(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractViolation(f"a malformed {kind} line ({exc}): {clip(line)}") from None
    raise ContractViolation(f"an unknown kind of status line: {clip(line)}")


def model_status(raw: dict[str, Any]) -> ModelStatus:
    """A :class:`ModelStatus` from its JSON form (a status line, or a repository index entry)."""
    state = ModelState(raw["state"])
    failure = raw.get("failure")
    phases = raw.get("phases") or {}
    if not isinstance(phases, dict):
        raise TypeError("phases must be an object")
    level = raw.get("level")
    woke_from, wake_s = raw.get("woke_from"), raw.get("wake_s")
    return ModelStatus(
        model=_str(raw.get("model", raw.get("name"))),
        state=state,
        reason=_str(raw.get("reason") or ""),
        failure=None if failure is None else FailureKind(failure),
        phases={_str(k): _number(v) for k, v in phases.items()},
        level=None if level is None else SleepLevel(level),
        woke_from=None if woke_from is None else SleepLevel(woke_from),
        wake_s=None if wake_s is None else _number(wake_s),
        served_as=None if raw.get("served_as") is None else _str(raw["served_as"]),
    )


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("must be a list")
    return value


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


def clip(line: bytes | str) -> str:
    """The start of a line a contract refused, to quote in the error."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    return text.strip()[:200]


# A streamed completion's tokens, for the activator's books, when its client did not ask for
# them: the activator sends USAGE_HEADER with the request; Ember's replica then ends the stream
# with one SSE comment (a line SSE clients ignore), written as its own chunk, which the activator
# reads and drops before the client sees it (activator.usage).
USAGE_HEADER = b"ember-usage"
USAGE_COMMENT = b": ember-usage "


def usage_comment(prompt_tokens: int, completion_tokens: int) -> bytes:
    """The SSE comment that tells a stream's tokens to the activator."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return USAGE_COMMENT + json.dumps({"usage": usage}, separators=(",", ":")).encode() + b"\n\n"
