"""``ember simulate``: replay a trace through a keep-alive/pre-warm policy, no models run.

The traces (an Azure Functions 2019 directory, or an Ember event log whose requests keep their
own execution times and tokens) are :mod:`analysis.simulate_trace`'s. The first request of an
arrival finds the model loaded or not.

For each model, after every arrival the policy says when to load it again and for how long
to keep it (:mod:`activator.policy`), counted from the end of the serving in flight (a request
still being served keeps the model loaded, and the one arriving meanwhile warm). Counted: cold
starts (an arrival with the model not loaded), loaded seconds (what a GPU is held for), of which
busy (serving at least one request) and warm-idle, loads (each costing ``cold_start_s`` of
loading), the latency cold starts add, and the cost of loaded plus loading time at
``price_per_hour``. ``p75_app_cold_start_rate`` is the 75th percentile over models of each
model's cold-start rate, the paper's headline figure. Where requests carry tokens, the same
figures weighted by tokens and the cost per million tokens (:mod:`analysis.simulate_tokens`);
``weight`` says which cold-start rate the Markdown's headline shows. ``tiered`` sleeps at levels
instead (:mod:`activator.tiered`) and is replayed by :mod:`analysis.simulate_tiered`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Any

from activator.errors import ConfigError
from activator.policy import History, Policy
from activator.tiered import Tiered
from analysis.cost_markdown import per_million, tokens
from analysis.simulate_tiered import simulate_tiered_one, tiered_totals
from analysis.simulate_tokens import p75, token_row, token_totals
from analysis.simulate_trace import Arrival, Trace, busy_seconds, load_trace

__all__ = ["WEIGHTS", "Trace", "load_trace", "simulate", "simulate_one", "to_json", "to_markdown"]

# what the headline cold-start rate counts: each request, or each request's tokens
WEIGHTS = ("requests", "tokens")


def simulate_one(
    trace: Trace, policy: Policy, cold_start_s: float, price_per_hour: float
) -> dict[str, Any]:
    history = History()
    window: tuple[float, float] | None = None  # the loaded (or scheduled) interval
    prewarmed = False
    counted = float("-inf")  # loaded seconds are counted up to here
    done = float("-inf")  # when the requests being served end
    loaded = 0.0
    loads = cold = requests = 0
    served: list[tuple[Arrival, bool]] = []  # each arrival, and whether it met a cold start
    for a in trace.arrivals:
        t = a.t
        requests += a.count
        warm = t <= done or (window is not None and window[0] <= t <= window[1])
        if window is not None and window[0] <= t:
            loaded += max(0.0, min(window[1], t) - max(window[0], counted))
            counted = max(counted, min(window[1], t))
            loads += prewarmed  # a pre-warm load that happened
        if not warm:
            cold += 1
            loads += 1
        served.append((a, not warm))
        done = max(done, t + a.exec_s)
        history.observe(t)
        decision = policy.decide(history)
        if decision.prewarm_s <= done - t:
            window, prewarmed = (t, done + decision.keep_alive_s), False
        else:
            loaded += done - max(t, counted)  # serving, then unloaded until the pre-warm
            counted = done
            start = t + decision.prewarm_s
            window, prewarmed = (start, start + decision.keep_alive_s), True
    if window is not None and window[0] <= trace.horizon_s:
        loaded += max(0.0, min(window[1], trace.horizon_s) - max(window[0], counted))
        loads += prewarmed
    loading = loads * cold_start_s
    cost = (loaded + loading) * price_per_hour / 3600
    busy = busy_seconds(trace.arrivals)
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
        **token_row(served, cost_usd=cost, added_latency_s=cold * cold_start_s),
    }


def simulate(
    traces: list[Trace],
    policy: Policy | Tiered,
    *,
    cold_start_s: float = 2.0,
    price_per_hour: float = 0.71,
    weight: str = "requests",
) -> dict[str, Any]:
    """The policy replayed over each trace: per model and in total; ``weight`` (one of
    :data:`WEIGHTS`): the cold-start rate the Markdown's headline shows, ``tokens`` only for a
    trace whose requests carry tokens."""
    if cold_start_s < 0 or price_per_hour < 0:
        raise ConfigError("--cold-start and --price must not be negative")
    if weight not in WEIGHTS:
        raise ConfigError(f"--weight {weight!r}: expected one of {', '.join(WEIGHTS)}")
    if weight == "tokens" and not any(a.tokens is not None for t in traces for a in t.arrivals):
        raise ConfigError(
            "--weight tokens: no request of this trace carries tokens (an Azure trace, or a log "
            "of models whose answers said no usage); use --weight requests"
        )
    if isinstance(policy, Tiered):
        result = _simulate_tiered(traces, policy, cold_start_s, price_per_hour)
    else:
        rows = [simulate_one(t, policy, cold_start_s, price_per_hour) for t in traces]
        result = _summary(policy.name, rows, cold_start_s, price_per_hour)
    result["settings"]["weight"] = weight
    return result


def _simulate_tiered(
    traces: list[Trace], policy: Tiered, cold_start_s: float, price_per_hour: float
) -> dict[str, Any]:
    policy = replace(policy, wake=replace(policy.wake, zero=cold_start_s))
    rows = [
        simulate_tiered_one(
            t.arrivals, policy, name=t.name, horizon_s=t.horizon_s, price_per_hour=price_per_hour
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
    requests = sum(r["requests"] for r in rows)
    cold = sum(r["cold_starts"] for r in rows)
    app_rate = p75(r["cold_start_rate"] for r in rows if r["requests"])
    return {
        "policy": name,
        "total": {
            "requests": requests,
            "cold_starts": cold,
            "cold_start_rate": cold / requests if requests else 0.0,
            "p75_app_cold_start_rate": 0.0 if app_rate is None else app_rate,
            "warm_idle_gpu_seconds": sum(r["warm_idle_gpu_seconds"] for r in rows),
            "loading_seconds": sum(r["loading_seconds"] for r in rows),
            "added_latency_s": sum(r["added_latency_s"] for r in rows),
            "cost_usd": sum(r["cost_usd"] for r in rows),
            **token_totals(rows),
        },
        "models": rows,
        "settings": {"cold_start_s": cold_start_s, "price_per_hour": price_per_hour},
    }


def to_markdown(result: dict[str, Any]) -> str:
    t = result["total"]
    if result["settings"].get("weight") == "tokens":
        head = "| policy | tokens | cold-start tokens | token rate | p75 app token rate "
        counts = (
            f"{_count(t['tokens'])} | {t['cold_start_tokens']:,} | "
            f"{_pct(t['cold_start_token_rate'])} | {_pct(t['p75_app_cold_start_token_rate'])}"
        )
    else:
        head = "| policy | requests | cold starts | rate | p75 app rate "
        counts = (
            f"{t['requests']} | {t['cold_starts']} | "
            f"{t['cold_start_rate']:.2%} | {t['p75_app_cold_start_rate']:.2%}"
        )
    table = (
        f"{head}| warm-idle GPU-s | cost |\n|---|---:|---:|---:|---:|---:|---:|\n"
        f"| {result['policy']} | {counts} | {t['warm_idle_gpu_seconds']:.0f} | "
        f"${t['cost_usd']:.2f} |\n"
    )
    if t["tokens"] is not None:
        table += _token_table(result)
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


def _token_table(result: dict[str, Any]) -> str:
    """The models whose requests carry tokens, and their total: the figures per token."""
    lines = [
        "",
        "| model | tokens prompt / completion | requests with usage | cold-start token rate "
        "| added latency per 1k tokens | per 1M tokens |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    total = {**result["total"], "model": "**total**"}
    for row in [*(m for m in result["models"] if m["tokens"] is not None), total]:
        per_1k = row["added_latency_s_per_1k_tokens"]
        lines.append(
            f"| {row['model']} | {tokens(row)} | {row['tokens']['requests_with_usage']} | "
            f"{_pct(row['cold_start_token_rate'])} | "
            f"{'-' if per_1k is None else f'{per_1k:.3g} s'} | {per_million(row)} |"
        )
    return "\n".join(lines) + "\n"


def _count(said: dict[str, int]) -> str:
    return f"{said['prompt'] + said['completion']:,}"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
