"""``ember simulate``: replay a trace through a keep-alive/pre-warm policy, no models run.

Traces: a directory of Azure Functions 2019 invocation files (``*_inv.csv``: one row per model,
``HashFunction,HashOwner,HashApp,minute_1..minute_N`` counts; an optional ``*_run.csv`` gives each
function's average execution time), or an Ember event log (its ``request`` events). A minute's
invocations arrive at its start; the first finds the model loaded or not.

For each model, after every invocation the policy says when to load it again and for how long
to keep it (:mod:`activator.policy`). Counted: cold starts (an invocation with the model not
loaded), loaded seconds (what a GPU is held for), of which busy (execution) and warm-idle, loads
(each costing ``cold_start_s`` of loading), the latency cold starts add, and the cost of loaded
plus loading time at ``price_per_hour``. ``p75_app_cold_start_rate`` is the 75th percentile over
models of each model's cold-start rate, the paper's headline figure. ``tiered`` sleeps at levels
instead (:mod:`activator.tiered`) and is replayed by :mod:`analysis.simulate_tiered`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from activator.errors import ConfigError
from activator.policy import History, Policy
from activator.tiered import Tiered
from analysis.simulate_tiered import simulate_tiered_one, tiered_totals
from contracts.events import Request

HEADER = ["HashFunction", "HashOwner", "HashApp"]


@dataclass
class Trace:
    name: str
    arrivals: list[tuple[float, int]]  # (seconds, invocations), sorted
    exec_s: float
    horizon_s: float


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
            out.append(Trace(row[0], arrivals, run.get(row[0], 1.0), len(counts) * 60.0))
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
    from analysis.cost import read_log

    events, _ = read_log(path)
    requests = [e for e in events if isinstance(e, Request)]
    if not requests:
        raise ConfigError(f"{path}: no request events to replay")
    start = min(float(e.arrival or e.ts) for e in requests)
    end = max(float(e.ts) for e in events)
    by_model: dict[str, list[tuple[float, float]]] = {}
    for e in requests:
        t = float(e.arrival or e.ts) - start
        # a request handed to a replica has its end (the codec holds it to that)
        busy = float(e.end or 0.0) - float(e.start) if e.start is not None else 0.0
        by_model.setdefault(e.model, []).append((t, busy))
    return [
        Trace(
            name,
            [(t, 1) for t, _ in sorted(reqs)],
            sum(b for _, b in reqs) / len(reqs),
            end - start,
        )
        for name, reqs in by_model.items()
    ]


def simulate_one(
    trace: Trace, policy: Policy, cold_start_s: float, price_per_hour: float
) -> dict[str, Any]:
    history = History()
    window: tuple[float, float] | None = None  # the loaded (or scheduled) interval
    prewarmed = False
    loaded = busy = 0.0
    loads = cold = requests = 0
    for t, count in trace.arrivals:
        requests += count
        warm = window is not None and window[0] <= t <= window[1]
        if window is not None and window[0] <= t:
            loaded += min(window[1], t) - window[0]
            loads += prewarmed  # a pre-warm load that happened
        if not warm:
            cold += 1
            loads += 1
        busy += count * trace.exec_s
        history.observe(t)
        decision = policy.decide(history)
        if decision.prewarm_s <= trace.exec_s:
            window, prewarmed = (t, t + trace.exec_s + decision.keep_alive_s), False
        else:
            loaded += trace.exec_s  # serving, then unloaded until the pre-warm
            start = t + decision.prewarm_s
            window, prewarmed = (start, start + decision.keep_alive_s), True
    if window is not None and window[0] <= trace.horizon_s:
        loaded += min(window[1], trace.horizon_s) - window[0]
        loads += prewarmed
    loading = loads * cold_start_s
    cost = (loaded + loading) * price_per_hour / 3600
    return {
        "model": trace.name,
        "requests": requests,
        "cold_starts": cold,
        "cold_start_rate": cold / requests if requests else 0.0,
        "loads": loads,
        "loaded_gpu_seconds": loaded,
        "busy_gpu_seconds": min(busy, loaded),
        "warm_idle_gpu_seconds": max(0.0, loaded - busy),
        "loading_seconds": loading,
        "added_latency_s": cold * cold_start_s,
        "cost_usd": cost,
    }


def simulate(
    traces: list[Trace],
    policy: Policy | Tiered,
    *,
    cold_start_s: float = 2.0,
    price_per_hour: float = 0.71,
) -> dict[str, Any]:
    if cold_start_s < 0 or price_per_hour < 0:
        raise ConfigError("--cold-start and --price must not be negative")
    if isinstance(policy, Tiered):
        return _simulate_tiered(traces, policy, cold_start_s, price_per_hour)
    rows = [simulate_one(t, policy, cold_start_s, price_per_hour) for t in traces]
    return _summary(policy.name, rows, cold_start_s, price_per_hour)


def _simulate_tiered(
    traces: list[Trace], policy: Tiered, cold_start_s: float, price_per_hour: float
) -> dict[str, Any]:
    policy = replace(policy, wake=replace(policy.wake, zero=cold_start_s))
    rows = [
        simulate_tiered_one(
            t.arrivals,
            policy,
            name=t.name,
            exec_s=t.exec_s,
            horizon_s=t.horizon_s,
            price_per_hour=price_per_hour,
        )
        for t in traces
    ]
    result = _summary(policy.name, rows, cold_start_s, price_per_hour)
    result["total"].update(tiered_totals(rows, policy.wake))
    result["settings"]["wake_s"] = asdict(policy.wake)
    return result


def _summary(
    name: str, rows: list[dict[str, Any]], cold_start_s: float, price_per_hour: float
) -> dict[str, Any]:
    called = [r for r in rows if r["requests"]]
    requests = sum(r["requests"] for r in rows)
    cold = sum(r["cold_starts"] for r in rows)
    rates = sorted(r["cold_start_rate"] for r in called)
    p75 = rates[min(len(rates) - 1, math.ceil(0.75 * len(rates)) - 1)] if rates else 0.0
    return {
        "policy": name,
        "total": {
            "requests": requests,
            "cold_starts": cold,
            "cold_start_rate": cold / requests if requests else 0.0,
            "p75_app_cold_start_rate": p75,
            "warm_idle_gpu_seconds": sum(r["warm_idle_gpu_seconds"] for r in rows),
            "loading_seconds": sum(r["loading_seconds"] for r in rows),
            "added_latency_s": sum(r["added_latency_s"] for r in rows),
            "cost_usd": sum(r["cost_usd"] for r in rows),
        },
        "models": rows,
        "settings": {"cold_start_s": cold_start_s, "price_per_hour": price_per_hour},
    }


def to_markdown(result: dict[str, Any]) -> str:
    t = result["total"]
    table = (
        f"| policy | requests | cold starts | rate | p75 app rate | warm-idle GPU-s | cost |\n"
        f"|---|---:|---:|---:|---:|---:|---:|\n"
        f"| {result['policy']} | {t['requests']} | {t['cold_starts']} | "
        f"{t['cold_start_rate']:.2%} | {t['p75_app_cold_start_rate']:.2%} | "
        f"{t['warm_idle_gpu_seconds']:.0f} | ${t['cost_usd']:.2f} |\n"
    )
    if "wakes" not in t:
        return table
    w = t["wakes"]
    return table + (
        f"\n| wakes host/disk/zero | wake latency p50/p99 | device-s saved by sleep / by zero "
        f"| host-memory-s |\n|---|---:|---:|---:|\n"
        f"| {w['host']}/{w['disk']}/{w['zero']} | {t['wake_latency_p50_s']:g}s / "
        f"{t['wake_latency_p99_s']:g}s | {t['device_s_saved_by_sleep']:.0f} / "
        f"{t['device_s_saved_by_zero']:.0f} | {t['host_memory_seconds']:.0f} |\n"
    )


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
