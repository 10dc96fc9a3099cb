"""``ember simulate``: keep-alive/pre-warm policies replayed over synthetic and sampled traces
and event logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from activator.policy import Fixed, History, Hybrid, parse_policy
from analysis.simulate import Trace, load_trace, simulate, simulate_one
from contracts.errors import ConfigError
from tests.servers import ROOT
from tests.spec import TRACE_SAMPLE, data_path

DAY = 24 * 3600


def periodic(period_s: float, name: str = "periodic") -> Trace:
    return Trace.of_counts(name, [(t * period_s, 1) for t in range(int(DAY // period_s))], 1.0, DAY)


def test_hybrid_prewarms_a_strictly_periodic_model_in_time() -> None:
    trace = periodic(30 * 60)  # every 30 minutes, all day
    hybrid = simulate_one(trace, Hybrid(), 2.0, 0.71)
    fixed = simulate_one(trace, Fixed(600), 2.0, 0.71)
    # fixed 10 min: every call is cold; hybrid: only the first few, before the pattern is learned
    assert fixed["cold_starts"] == fixed["requests"] == 48
    assert hybrid["cold_starts"] <= Hybrid().min_samples + 1
    assert hybrid["warm_idle_gpu_seconds"] < fixed["warm_idle_gpu_seconds"]
    history = History()
    for a in trace.arrivals:
        history.observe(a.t)
    decision = Hybrid().decide(history)
    # loaded again before the next call (at 27 min) and kept past it (to 34 min)
    assert decision.prewarm_s < 1800 < decision.prewarm_s + decision.keep_alive_s


def test_hybrid_does_not_keep_a_one_off_model_warm_for_hours() -> None:
    trace = Trace.of_counts("one-off", [(3600.0, 1)], 1.0, DAY)
    result = simulate_one(trace, Hybrid(), 2.0, 0.71)
    assert result["warm_idle_gpu_seconds"] <= 600  # the fixed window at most, not hours
    bursty = Trace.of_counts(
        "bursty", [(t, 1) for t in (0, 60, 120, 180, 240, 300, 9 * 3600)], 0.1, DAY
    )
    result = simulate_one(bursty, Hybrid(), 2.0, 0.71)
    assert result["warm_idle_gpu_seconds"] < 2 * 3600


def test_accounting_of_a_fixed_window_by_hand() -> None:
    trace = Trace.of_counts("m", [(0.0, 2), (300.0, 1), (2000.0, 1)], 10.0, 3000.0)
    r = simulate_one(trace, Fixed(600), cold_start_s=2.0, price_per_hour=3.6)
    # loaded [0, 310] then [300, 910] (contiguous: 910 s), cold again at 2000, loaded to 2610
    assert r["cold_starts"] == 2 and r["requests"] == 4
    assert r["loaded_gpu_seconds"] == pytest.approx(910 + 610)
    assert r["warm_idle_gpu_seconds"] == pytest.approx(910 + 610 - 40)
    assert r["loading_seconds"] == 4 and r["added_latency_s"] == 4
    assert r["cost_usd"] == pytest.approx((1520 + 4) * 3.6 / 3600)


def test_wrong_columns_and_missing_traces(tmp_path: Path) -> None:
    (tmp_path / "x_inv.csv").write_text("Function,Owner,App,minute_1\na,a,a,1\n")
    with pytest.raises(ConfigError, match="wrong columns"):
        load_trace(tmp_path)
    with pytest.raises(ConfigError, match="no such trace"):
        load_trace(tmp_path / "nope")
    (tmp_path / "x_inv.csv").write_text("HashFunction,HashOwner,HashApp,minute_1\na,a,a,-1\n")
    with pytest.raises(ConfigError, match="negative"):
        load_trace(tmp_path)


def test_the_sample_and_the_target() -> None:
    traces = load_trace(data_path(TRACE_SAMPLE))
    assert len(traces) == 100
    fixed = simulate(traces, parse_policy("fixed:10m"))["total"]
    hybrid = simulate(traces, parse_policy("hybrid"))["total"]
    assert hybrid["requests"] == fixed["requests"] > 0
    assert hybrid["p75_app_cold_start_rate"] < fixed["p75_app_cold_start_rate"]
    assert hybrid["warm_idle_gpu_seconds"] < fixed["warm_idle_gpu_seconds"]


def test_simulate_cli_and_event_logs(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    lines = [
        {
            "event": "request",
            "model": "m",
            "ts": t + 1,
            "arrival": t,
            "start": t,
            "end": t + 1,
            "status": 200,
            "cold": False,
            "queue_s": 0,
            "replica": 1,
        }
        for t in (0.0, 30.0, 5000.0)
    ]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ember",
            "simulate",
            "--trace",
            str(events),
            "--policy",
            "fixed:10m",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["policy"] == "fixed:10m"
    assert set(result["total"]) >= {
        "requests",
        "cold_starts",
        "cold_start_rate",
        "p75_app_cold_start_rate",
        "warm_idle_gpu_seconds",
        "cost_usd",
    }
    assert result["total"]["requests"] == 3 and result["total"]["cold_starts"] == 2
    bad = subprocess.run(
        [sys.executable, "-m", "ember", "simulate", "--trace", str(events), "--policy", "lru"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown policy" in bad.stderr
