"""A command engine's sleep and wake calls, as a model config names them.

A model served by another OpenAI-compatible server (``engine: command``) may say how that server
puts its model to sleep and wakes it, so a group's tiered policy can do it::

    sleep:
      host: POST /sleep?level=1        # vLLM's level 1: weights offloaded to host memory
      disk: POST /sleep?level=2        # vLLM's level 2: weights discarded
    wake: POST /wake_up                # one call, a list of calls, or per level:
    # wake:
    #   host: POST /wake_up
    #   disk: [POST /wake_up, {call: POST /collective_rpc, body: {method: reload_weights}}]

A call is ``METHOD /PATH`` (the query included), sent to the replica's address, or a mapping
with ``call`` and a JSON ``body``. A level without a sleep call is not used (the policy goes on
to the next deeper one, or to zero); every level that sleeps needs its wake. Parsed once, here,
for both readers: the runtime's model config (:mod:`runtime.config`) and the stack
(:mod:`contracts.stack`, which the activator acts on).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

from contracts.replica import SleepLevel

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_CALL = re.compile(r"^(?P<method>[A-Za-z]+)\s+(?P<path>/\S*)$")
_EXAMPLE = "e.g. 'POST /sleep?level=1'"
_LEVELS = "host (vLLM's level 1) or disk (vLLM's level 2)"


class EngineCall(BaseModel):
    """One HTTP call to the engine's server: its method, its path (with the query) and an
    optional JSON body."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str
    path: str
    body: Any = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _call(value: object) -> EngineCall:
    """``"POST /sleep?level=1"``, or ``{call: "POST /collective_rpc", body: {...}}``."""
    if isinstance(value, EngineCall):
        return value
    body = None
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in ("call", "body"))
        if unknown or "call" not in value:
            what = f"unknown key {unknown[0]!r}" if unknown else "no 'call'"
            raise ValueError(
                f"{what}: a call with a body is a mapping of 'call' (METHOD /PATH) and 'body' "
                "(its JSON)"
            )
        body = value.get("body")
        value = value["call"]
    if not isinstance(value, str):
        raise ValueError(f"a call is a string METHOD /PATH ({_EXAMPLE}), not {value!r}")
    match = _CALL.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a call: write METHOD /PATH, {_EXAMPLE}")
    method = match["method"].upper()
    if method not in METHODS:
        raise ValueError(f"{value!r}: unknown method {match['method']!r}; one of {METHODS}")
    if match["path"].startswith("//"):
        raise ValueError(f"{value!r}: a path on the engine's server, not another host")
    return EngineCall(method=method, path=match["path"], body=body)


def _calls(value: object) -> tuple[EngineCall, ...]:
    """One call, or a non-empty list of them (made in order)."""
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("an empty list of calls: name at least one")
        return tuple(_call(item) for item in value)
    return (_call(value),)


def _level(key: object) -> SleepLevel:
    try:
        return SleepLevel(str(key))
    except ValueError:
        raise ValueError(f"unknown level {key!r}: the levels are {_LEVELS}") from None


def _per_level(value: object) -> dict[SleepLevel, tuple[EngineCall, ...]]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            "a mapping of levels to calls, e.g. {host: 'POST /sleep?level=1', "
            "disk: 'POST /sleep?level=2'}"
        )
    calls = {}
    for level, given in value.items():
        try:
            known = _level(level)
            calls[known] = _calls(given)
        except ValueError as exc:
            raise ValueError(f"{level}: {exc}") from None
    return calls


def _sleep_calls(value: object) -> dict[SleepLevel, tuple[EngineCall, ...]]:
    return _per_level(value)


def _wake_calls(
    value: object,
) -> tuple[EngineCall, ...] | dict[SleepLevel, tuple[EngineCall, ...]]:
    if isinstance(value, Mapping) and "call" not in value:
        return _per_level(value)
    return _calls(value)


#: ``sleep:``: each level's call(s)
SleepCalls = Annotated[dict[SleepLevel, tuple[EngineCall, ...]], BeforeValidator(_sleep_calls)]
#: ``wake:``: the call(s) that wake it from any level, or each level's
WakeCalls = Annotated[
    tuple[EngineCall, ...] | dict[SleepLevel, tuple[EngineCall, ...]],
    BeforeValidator(_wake_calls),
]


def check_calls(
    sleep: Mapping[SleepLevel, object] | None,
    wake: tuple[EngineCall, ...] | Mapping[SleepLevel, object] | None,
) -> None:
    """ValueError unless ``sleep`` and ``wake`` are both given, and every level that sleeps
    has its wake (and no wake is for a level that does not sleep)."""
    if sleep is None and wake is None:
        return
    if wake is None:
        raise ValueError("'sleep' needs the 'wake' call(s) too, e.g. wake: 'POST /wake_up'")
    if sleep is None:
        raise ValueError("'wake' needs the 'sleep' calls too, e.g. sleep: {host: 'POST /sleep'}")
    if isinstance(wake, Mapping):
        missing = [str(level) for level in sleep if level not in wake]
        if missing:
            raise ValueError(f"wake: no call for level {', '.join(missing)}, which 'sleep' names")
        extra = [str(level) for level in wake if level not in sleep]
        if extra:
            raise ValueError(f"wake: level {', '.join(extra)} has no 'sleep' call to wake from")


class EngineCalls(BaseModel):
    """A command engine's sleep and wake calls (the ``sleep`` and ``wake`` keys of its model
    config; other keys are not read here)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sleep: SleepCalls
    wake: WakeCalls

    @model_validator(mode="after")
    def _consistent(self) -> EngineCalls:
        check_calls(self.sleep, self.wake)
        return self

    @property
    def levels(self) -> frozenset[SleepLevel]:
        """The levels the engine sleeps at (the others are not used)."""
        return frozenset(self.sleep)

    def sleep_calls(self, level: SleepLevel) -> tuple[EngineCall, ...]:
        return self.sleep[level]

    def wake_calls(self, level: SleepLevel) -> tuple[EngineCall, ...]:
        """The calls that wake it from ``level``."""
        return self.wake[level] if isinstance(self.wake, dict) else self.wake
