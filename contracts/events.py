"""The event log's events, typed, and the one codec that writes and reads their JSON lines.

The activator writes one line per transition and per request (:class:`activator.events.EventLog`);
the cost report and the policy simulator read them back. Both go through :func:`encode` and
:func:`decode`, so the shape of a line is said once, here. A line is a JSON object: ``event``
(the kind), ``v`` (the schema version, :data:`VERSION`), ``model``, ``ts`` (wall clock, Unix
seconds), ``mono`` (the writer's monotonic clock) and the kind's fields, under the keys they have
always had (``from``, and ``replica_failed``'s ``kind``, are spelt so on the line).

Reading is lenient as it always was: a line that is not JSON, or whose fields the readers use
have the wrong type, decodes to None (the reader skips and counts it); a line of a kind this
version does not know decodes to :class:`Unknown` (readers pass over it, but it still marks the
model and the log's span); a field nobody reads that has the wrong type reads as its default.
Old logs read too, their differences handled here only: lines without ``v`` (version 0), fields
missing (their defaults), and the admin API's ``sleep`` without a ``level``, which is what
``warm_end`` was called before it had a name.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

VERSION = 1  # the schema version every written line carries as ``v``; lines without it are 0
_OPTIONAL = {"optional": True}  # a field left off the line when it is None


@dataclass(frozen=True, kw_only=True)
class Event:
    """What every event has. ``ts`` and ``mono`` are stamped by the log when it is written."""

    kind: ClassVar[str] = ""
    model: str
    ts: float = 0.0
    mono: float | None = None


@dataclass(frozen=True, kw_only=True)
class ReplicaEvent(Event):
    """An event about one replica of a model (or of a group: a group's pool bears its name)."""

    replica: int | None = None


@dataclass(frozen=True, kw_only=True)
class State(Event):
    """A model's state changed (``from`` on the line)."""

    kind: ClassVar[str] = "state"
    from_: str | None = None
    to: str | None = None
    reason: str | None = field(default=None, metadata=_OPTIONAL)


@dataclass(frozen=True, kw_only=True)
class ReplicaStarting(ReplicaEvent):
    """A replica is starting: what it runs on and its price, where the config gives them."""

    kind: ClassVar[str] = "replica_starting"
    replica: int = field()  # always known: the report keys its lifetime by it
    gpu_type: str | None = None
    device: str | None = field(default=None, metadata=_OPTIONAL)  # older logs' GPU mark
    price_per_hour: float | None = None
    cpus: float | None = None
    why: str = ""


@dataclass(frozen=True, kw_only=True)
class ReplicaReady(ReplicaEvent):
    """A replica is ready: its address, how long the start took and its parts."""

    kind: ClassVar[str] = "replica_ready"
    url: str | None = None
    cold_start_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    warm_pool: bool | None = None


@dataclass(frozen=True, kw_only=True)
class ReplicaFailed(ReplicaEvent):
    """A replica's start failed: why, the kind of failure (``kind`` on the line) and the
    replica's own failure, where it said one."""

    kind: ClassVar[str] = "replica_failed"
    reason: str | None = None
    failure_kind: str | None = None
    failure: str | None = field(default=None, metadata=_OPTIONAL)


@dataclass(frozen=True, kw_only=True)
class ReplicaStopped(ReplicaEvent):
    """A replica stopped: why, and how long it ran."""

    kind: ClassVar[str] = "replica_stopped"
    reason: str | None = None
    uptime_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class Request(ReplicaEvent):
    """A request that reached the model's data path: its route, its times (wall clock; ``start``
    None: never handed to a replica), its status, whether it waited for a start; for a text
    generation or embedding answer that said its ``usage``, its prompt and completion tokens,
    and for a streamed one the seconds from its hand-off to the replica to its first event
    (``ttft_s``). The token fields are left off the line when the answer said none."""

    kind: ClassVar[str] = "request"
    endpoint: str = ""
    version: str = ""
    arrival: float | None = None
    start: float | None = None
    end: float | None = None
    status: int = 0
    cold: bool = False
    queue_s: float | None = None
    prompt_tokens: int | None = field(default=None, metadata=_OPTIONAL)
    completion_tokens: int | None = field(default=None, metadata=_OPTIONAL)
    ttft_s: float | None = field(default=None, metadata=_OPTIONAL)


@dataclass(frozen=True, kw_only=True)
class Prewarm(Event):
    """A warm window began: until when, with how many replicas, who asked."""

    kind: ClassVar[str] = "prewarm"
    until: float | None = None
    replicas: int | None = None
    source: str | None = None


@dataclass(frozen=True, kw_only=True)
class WarmEnd(Event):
    """A warm window was ended (the admin API's sleep)."""

    kind: ClassVar[str] = "warm_end"


@dataclass(frozen=True, kw_only=True)
class PolicyDecision(Event):
    """A keep-alive policy decided: pre-warm in, keep alive for, and why."""

    kind: ClassVar[str] = "policy"
    policy: str | None = None
    prewarm_s: float | None = None
    keep_alive_s: float | None = None
    why: str | None = None


@dataclass(frozen=True, kw_only=True)
class Sleep(ReplicaEvent):
    """A group's member went to sleep at ``level`` on one of the group's replicas."""

    kind: ClassVar[str] = "sleep"
    group: str | None = None
    level: str | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class Wake(ReplicaEvent):
    """A group's member woke from ``level``; ``wake_s``: what the wake added (None: unknown)."""

    kind: ClassVar[str] = "wake"
    group: str | None = None
    level: str | None = None
    wake_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class ActivatorStart(Event):
    """A run of the activator began (``model`` is empty)."""

    kind: ClassVar[str] = "activator_start"
    run: str | None = None
    pid: int | None = None


@dataclass(frozen=True, kw_only=True)
class ActivatorStop(Event):
    """A run of the activator ended cleanly, its replicas stopped first (``model`` is empty)."""

    kind: ClassVar[str] = "activator_stop"
    run: str | None = None


@dataclass(frozen=True, kw_only=True)
class Unknown(Event):
    """A well-formed event of a kind this version does not know: ``event`` its kind, ``fields``
    the rest of its line. Kept, as readers always kept them: it marks its model and the span."""

    kind: ClassVar[str] = ""
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


KINDS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        State,
        ReplicaStarting,
        ReplicaReady,
        ReplicaFailed,
        ReplicaStopped,
        Request,
        Prewarm,
        WarmEnd,
        PolicyDecision,
        Sleep,
        Wake,
        ActivatorStart,
        ActivatorStop,
    )
}
# a field's key on the line, where it is not the field's name
_KEYS = {"from_": "from", "failure_kind": "kind"}
_BASE = ("model", "ts", "mono")


# ---------------------------------------------------------------------- writing
def encode(event: Event) -> str:
    """The event as its JSON line (with its newline)."""
    return json.dumps(to_record(event), separators=(",", ":"), default=str) + "\n"


def to_record(event: Event) -> dict[str, Any]:
    """The event as the JSON object its line holds."""
    if isinstance(event, Unknown):
        record = {"event": event.event, "v": VERSION, "model": event.model, "ts": event.ts}
        return {**record, "mono": event.mono, **event.fields}
    record = {"event": event.kind, "v": VERSION}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if value is not None or not f.metadata.get("optional"):
            record[_KEYS.get(f.name, f.name)] = value
    return record


# ---------------------------------------------------------------------- reading
def decode(line: bytes | str) -> Event | None:
    """The event on one line, or None: not JSON, or not an event with the fields readers use
    of their types (the reader skips it and counts it)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return from_record(record)


def from_record(record: Any) -> Event | None:
    """The event a decoded JSON line holds (see :func:`decode`)."""
    if not _well_typed(record):
        return None
    kind = record["event"]
    base = {k: record[k] for k in _BASE if k in record}
    if kind in ("sleep", "wake") and "level" not in record:
        # before ``warm_end`` had its name, the admin API's sleep was a ``sleep`` without a
        # level; a ``wake`` without one was never written: neither is a sleep to count
        if kind == "sleep":
            return WarmEnd(**base)
        kind = ""
    cls = KINDS.get(kind)
    if cls is None:
        rest = {k: v for k, v in record.items() if k not in (*_BASE, "event", "v")}
        return Unknown(**base, event=record["event"], fields=rest)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = _KEYS.get(f.name, f.name)
        if f.name in _BASE or key not in record:
            continue
        value = record[key]
        if _LENIENT.get(key, _anything)(value):
            fields[f.name] = value
    return cls(**base, **fields)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _anything(v: Any) -> bool:
    return True


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _phases(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _number(x) for k, x in v.items())


# the fields readers use, with their types: checked where present (those in _REQUIRED must be);
# a line that breaks them is skipped
_FIELDS: dict[str, Callable[[Any], bool]] = {
    "event": _text,
    "model": _text,
    "ts": _number,
    "mono": _number,
    "replica": _or_null(_integer),
    "group": _or_null(_text),
    "level": _or_null(_text),
    "until": _or_null(_number),
    "wake_s": _or_null(_number),
    "gpu_type": _or_null(_text),
    "device": _or_null(_text),
    "price_per_hour": _or_null(_number),
    "cpus": _or_null(_number),
}
_REQUEST_FIELDS: dict[str, Callable[[Any], bool]] = {
    "endpoint": _text,
    "version": _text,
    "arrival": _or_null(_number),
    "start": _or_null(_number),
    "end": _number,
    "status": _integer,
    "cold": _flag,
    "queue_s": _or_null(_number),
    "prompt_tokens": _or_null(_integer),
    "completion_tokens": _or_null(_integer),
    "ttft_s": _or_null(_number),
}
_REQUEST_ALL = {**_FIELDS, **_REQUEST_FIELDS}
_REQUIRED: dict[str, tuple[str, ...]] = {"replica_starting": ("replica",)}
# the fields nobody reads for a figure: one of the wrong type reads as its default
_LENIENT: Mapping[str, Callable[[Any], bool]] = {
    "from": _or_null(_text),
    "to": _or_null(_text),
    "reason": _or_null(_text),
    "why": _text,
    "url": _or_null(_text),
    "cold_start_s": _or_null(_number),
    "phases": _phases,
    "warm_pool": _or_null(_flag),
    "kind": _or_null(_text),
    "failure": _or_null(_text),
    "uptime_s": _or_null(_number),
    "replicas": _or_null(_integer),
    "source": _or_null(_text),
    "policy": _or_null(_text),
    "prewarm_s": _or_null(_number),
    "keep_alive_s": _or_null(_number),
    "run": _or_null(_text),
    "pid": _or_null(_integer),
}


def _well_typed(record: Any) -> bool:
    if not isinstance(record, dict) or not all(k in record for k in ("event", "model", "ts")):
        return False
    kind = record["event"]
    fields = _REQUEST_ALL if kind == "request" else _FIELDS
    if not all(check(record[k]) for k, check in fields.items() if k in record):
        return False
    if kind == "request" and record.get("start") is not None and "end" not in record:
        return False  # busy from start to end: the end must be known
    return all(k in record for k in _REQUIRED.get(kind, ()))
