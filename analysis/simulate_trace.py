"""The traces ``ember simulate`` replays: what arrived, when, for how long, with how many tokens.

Two sources. A directory of Azure Functions 2019 invocation files (``*_inv.csv``: one row per
model, ``HashFunction,HashOwner,HashApp,minute_1..minute_N`` counts; an optional ``*_run.csv``
gives each function's average execution time): a minute's invocations arrive together at its
start, each taking the function's average, with no tokens. Or an Ember event log (its
``request`` events): each request arrives alone at its ``arrival``, takes its own ``start`` to
``end`` (0 s for one never handed to a replica), and carries the prompt and completion tokens
its answer said (:func:`analysis.cost.request_tokens`, the cost report's rule), None where it
said none.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from activator.errors import ConfigError
from contracts.events import Request

HEADER = ["HashFunction", "HashOwner", "HashApp"]


@dataclass(frozen=True)
class Arrival:
    """``count`` requests arriving together at ``t`` (seconds from the trace's start), each
    executing ``exec_s``; ``tokens``: the (prompt, completion) tokens of a single request that
    said them, None where it said none (an Azure minute never does)."""

    t: float
    count: int = 1
    exec_s: float = 0.0
    tokens: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and self.count != 1:
            raise ValueError("tokens belong to one request: an arrival with tokens has count 1")


@dataclass
class Trace:
    name: str
    arrivals: list[Arrival]  # sorted by t
    horizon_s: float

    @classmethod
    def of_counts(
        cls, name: str, counts: list[tuple[float, int]], exec_s: float, horizon_s: float
    ) -> Trace:
        """A trace of ``(t, count)`` arrivals whose requests all take ``exec_s`` (Azure's)."""
        return cls(name, [Arrival(t, c, exec_s) for t, c in counts], horizon_s)


def busy_seconds(arrivals: list[Arrival]) -> float:
    """Seconds at least one request is being served: the union of each arrival's
    ``[t, t + count * exec_s]`` (an arrival's requests one after another; concurrent requests,
    as a batch of streams, are not counted twice)."""
    total, until = 0.0, float("-inf")
    for a in arrivals:
        end = a.t + a.count * a.exec_s
        if end > until:
            total += end - max(a.t, until)
            until = end
    return total


def load_trace(path: Path) -> list[Trace]:
    if path.is_dir():
        files = sorted(path.glob("*_inv.csv"))
        if not files:
            raise ConfigError(f"{path}: no *_inv.csv file (Azure Functions 2019 format)")
        return [t for f in files for t in _azure(f)]
    if path.is_file():
        return _events(path)
    raise ConfigError(f"{path}: no such trace (a directory of *_inv.csv, or an event log)")


def _azure(path: Path) -> list[Trace]:
    run = _exec_times(path.with_name(path.name.replace("_inv.csv", "_run.csv")))
    out = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        minutes = header[3:]
        if header[:3] != HEADER or not minutes or not all(c.startswith("minute_") for c in minutes):
            raise ConfigError(
                f"{path}: wrong columns; expected {','.join(HEADER)},minute_1..minute_N"
            )
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ConfigError(
                    f"{path}:{line}: {len(row)} columns, the header has {len(header)}"
                )
            try:
                counts = [int(float(c)) for c in row[3:]]
            except ValueError:
                raise ConfigError(f"{path}:{line}: counts must be numbers") from None
            if any(c < 0 for c in counts):
                raise ConfigError(f"{path}:{line}: negative invocation count")
            arrivals = [(i * 60.0, c) for i, c in enumerate(counts) if c]
            out.append(Trace.of_counts(row[0], arrivals, run.get(row[0], 1.0), len(counts) * 60.0))
    return out


def _exec_times(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {
            r["HashFunction"]: max(0.0, float(r.get("Average") or 0)) / 1000
            for r in csv.DictReader(f)
            if r.get("HashFunction")
        }


def _events(path: Path) -> list[Trace]:
    from analysis.cost import read_log, request_tokens

    events, _ = read_log(path)
    requests = [e for e in events if isinstance(e, Request)]
    if not requests:
        raise ConfigError(f"{path}: no request events to replay")
    start = min(float(e.arrival or e.ts) for e in requests)
    end = max(float(e.ts) for e in events)
    by_model: dict[str, list[Arrival]] = {}
    for e in requests:
        # a request handed to a replica has its end (the codec holds it to that)
        exec_s = max(0.0, float(e.end or 0.0) - float(e.start)) if e.start is not None else 0.0
        arrival = Arrival(float(e.arrival or e.ts) - start, 1, exec_s, request_tokens(e))
        by_model.setdefault(e.model, []).append(arrival)
    # sorted by arrival; requests arriving together keep the log's order
    return [
        Trace(name, sorted(arrivals, key=lambda a: a.t), end - start)
        for name, arrivals in by_model.items()
    ]
