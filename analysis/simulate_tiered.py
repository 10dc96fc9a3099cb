"""``ember simulate --policy tiered``: replay a trace through :class:`activator.tiered.Tiered`.

A request finds the model at the level the plan made after the previous arrival says for the
time since serving ended (the end of the requests in flight: one arriving while another is
served finds the model hot); the wake from that level is added to the first request of its
arrival (the others of the same minute arrive with it, as cold starts are counted in
:mod:`analysis.simulate`) and held on the device as loading time. Device-seconds are the hot
seconds (serving included) plus the wakes; the seconds at host and disk are device-seconds saved
by sleeping, those at zero (after the first request) saved by scaling to zero; the seconds at
host are also host-memory seconds (one copy of the weights held in host RAM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from activator.policy import History
from activator.tiered import LEVELS, SLEEP_LEVELS, Level, Tiered, TierPlan, WakeCosts
from analysis.simulate_tokens import token_row
from analysis.simulate_trace import Arrival, busy_seconds


@dataclass(frozen=True)
class Step:
    arrival: Arrival
    level: Level  # where the arrival found the model
    wake_s: float  # added to the arrival's first request


def replay(
    arrivals: list[Arrival], policy: Tiered, *, horizon_s: float
) -> tuple[list[Step], dict[Level, float]]:
    """Each arrival's level and wake, and the seconds spent at each level up to the horizon."""
    history = History()
    seconds: dict[Level, float] = dict.fromkeys(LEVELS, 0.0)
    steps: list[Step] = []
    plan: TierPlan | None = None
    last = done = 0.0  # the last arrival; when the requests being served end

    def account(until: float) -> None:
        if plan is None or until <= last:
            return
        seconds[Level.HOT] += min(until, done) - last  # serving
        for level, s in plan.split(max(0.0, until - done)).items():
            seconds[level] += s

    for a in arrivals:
        level = Level.ZERO if plan is None else plan.level_at(a.t - done)
        account(a.t)
        steps.append(Step(a, level, policy.wake.of(level)))
        history.observe(a.t)
        plan, last, done = policy.decide(history), a.t, max(done, a.t + a.exec_s)
    account(horizon_s)
    return steps, seconds


def simulate_tiered_one(
    arrivals: list[Arrival],
    policy: Tiered,
    *,
    name: str,
    horizon_s: float,
    price_per_hour: float,
) -> dict[str, Any]:
    steps, seconds = replay(arrivals, policy, horizon_s=horizon_s)
    requests = sum(s.arrival.count for s in steps)
    woke = [s for s in steps if s.level is not Level.HOT]
    waited: dict[Level, int] = dict.fromkeys(LEVELS, 0)  # requests by the wake they waited for
    for s in steps:
        waited[s.level] += 1
        waited[Level.HOT] += s.arrival.count - 1
    loaded = seconds[Level.HOT]
    busy = busy_seconds(arrivals)
    loading = sum(s.wake_s for s in woke)
    cold = waited[Level.ZERO]
    cost = (loaded + loading) * price_per_hour / 3600
    served = [(s.arrival, s.level is Level.ZERO) for s in steps]
    return {
        "model": name,
        "requests": requests,
        "cold_starts": cold,
        "cold_start_rate": cold / requests if requests else 0.0,
        "loads": len(woke),
        "loaded_gpu_seconds": loaded,
        "busy_gpu_seconds": min(busy, loaded),
        "warm_idle_gpu_seconds": max(0.0, loaded - busy),
        "loading_seconds": loading,
        "added_latency_s": loading,
        "cost_usd": cost,
        **token_row(served, cost_usd=cost, added_latency_s=loading),
        "wakes": {level: waited[level] for level in (*SLEEP_LEVELS, Level.ZERO)},
        "requests_by_wake": waited,
        "device_s_saved_by_sleep": seconds[Level.HOST] + seconds[Level.DISK],
        "device_s_saved_by_zero": seconds[Level.ZERO],
        "host_memory_seconds": seconds[Level.HOST],
        "disk_seconds": seconds[Level.DISK],
    }


def tiered_totals(rows: list[dict[str, Any]], wake: WakeCosts) -> dict[str, Any]:
    """The tiered figures summed over models, with the wake latency's p50/p99 over requests."""
    waited = {lv: sum(r["requests_by_wake"][lv] for r in rows) for lv in LEVELS}
    return {
        "wakes": {lv: sum(r["wakes"][lv] for r in rows) for lv in (*SLEEP_LEVELS, Level.ZERO)},
        "wake_latency_p50_s": _percentile(waited, wake, 50),
        "wake_latency_p99_s": _percentile(waited, wake, 99),
        "device_s_saved_by_sleep": sum(r["device_s_saved_by_sleep"] for r in rows),
        "device_s_saved_by_zero": sum(r["device_s_saved_by_zero"] for r in rows),
        "host_memory_seconds": sum(r["host_memory_seconds"] for r in rows),
        "disk_seconds": sum(r["disk_seconds"] for r in rows),
    }


def _percentile(counts: dict[Level, int], wake: WakeCosts, q: float) -> float:
    """The q-th percentile wake time over requests, from how many waited for each level."""
    total = sum(counts.values())
    if not total:
        return 0.0
    rank = min(total, max(1, math.ceil(q / 100 * total)))
    for level in sorted(LEVELS, key=wake.of):
        rank -= counts[level]
        if rank <= 0:
            return wake.of(level)
    raise AssertionError("unreachable: the ranks add up to the total")
