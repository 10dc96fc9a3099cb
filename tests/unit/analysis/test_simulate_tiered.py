"""The tiered policy replayed (``ember simulate --policy tiered``): levels, wake costs, totals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from activator.policy import History
from activator.tiered import Tiered, WakeCosts
from analysis.simulate import Trace, simulate, to_markdown
from analysis.simulate_tiered import replay, simulate_tiered_one
from analysis.simulate_trace import Arrival
from tests.servers import ROOT

DAY = 24 * 3600


def arrive(counts: list[tuple[float, int]], exec_s: float) -> list[Arrival]:
    return [Arrival(t, count, exec_s) for t, count in counts]


def history_of(*times: float) -> History:
    history = History()
    for t in times:
        history.observe(t)
    return history


def test_a_request_every_30_s_stays_hot() -> None:
    arrivals = [(t * 30.0, 1) for t in range(DAY // 30)]
    steps, seconds = replay(arrive(arrivals, 1.0), Tiered(), horizon_s=DAY)
    assert steps[0].level == "zero" and steps[0].wake_s == 2.0  # the first request only
    assert {s.level for s in steps[1:]} == {"hot"} and all(s.wake_s == 0 for s in steps[1:])
    assert seconds == {"hot": DAY, "host": 0.0, "disk": 0.0, "zero": 0.0}
    # once the histogram is representative, hot only to its p99 + 10% (33 s), not the 60 s
    plan = Tiered().decide(history_of(*(t for t, _ in arrivals[:10])))
    assert plan.host_at_s == pytest.approx(33.0)


def test_a_burst_then_a_two_hour_gap_goes_host_disk_zero_at_the_chosen_times() -> None:
    arrivals = [(0.0, 1), (20.0, 1), (40.0, 1), (7240.0, 1)]
    plan = Tiered().decide(history_of(0, 20, 40))  # 2 idle times: no pattern
    # hot for the break-even 1200 * 0.05 = 60 s, host 20 min, disk 1 h, then zero
    assert (plan.host_at_s, plan.disk_at_s, plan.zero_at_s) == (60.0, 1260.0, 4860.0)
    assert [plan.level_at(s) for s in (60, 61, 1260, 1261, 4860, 4861)] == [
        "hot",
        "host",
        "host",
        "disk",
        "disk",
        "zero",
    ]
    steps, seconds = replay(arrive(arrivals, 0.0), Tiered(), horizon_s=7300.0)
    assert [s.level for s in steps] == ["zero", "hot", "hot", "zero"]
    # hot 20 + 20 + 60 after the burst + 60 after the last; zero from 40 + 4860 to 7240
    assert seconds == {"hot": 160.0, "host": 1200.0, "disk": 3600.0, "zero": 2340.0}
    row = simulate_tiered_one(
        arrive(arrivals, 0.0), Tiered(), name="m", horizon_s=7300.0, price_per_hour=3.6
    )
    assert row["host_memory_seconds"] == 1200.0
    assert row["device_s_saved_by_sleep"] == 4800.0 and row["device_s_saved_by_zero"] == 2340.0
    assert row["cold_starts"] == 2 and row["loading_seconds"] == 4.0
    assert row["cost_usd"] == pytest.approx((160.0 + 4.0) / 1000)


def test_wake_costs_are_charged_to_the_right_requests() -> None:
    wake = WakeCosts(host=0.1, disk=0.3, zero=99.0)  # zero is replaced by --cold-start
    # break-even 1200 * 0.1 = 120 s hot, host to 1320 s, disk to 4920 s
    arrivals = [(0.0, 1), (30.0, 1), (630.0, 1), (2630.0, 1), (8630.0, 3)]
    trace = Trace.of_counts("m", arrivals, 0.0, 9000.0)
    result = simulate([trace], Tiered(wake=wake), cold_start_s=2.0)
    steps, _ = replay(arrive(arrivals, 0.0), Tiered(wake=WakeCosts(0.1, 0.3, 2.0)), horizon_s=9000)
    assert [(s.level, s.wake_s) for s in steps] == [
        ("zero", 2.0),
        ("hot", 0.0),
        ("host", 0.1),
        ("disk", 0.3),
        ("zero", 2.0),  # the first of the three; the other two arrive with it
    ]
    total = result["total"]
    assert total["wakes"] == {"host": 1, "disk": 1, "zero": 2} and total["cold_starts"] == 2
    assert total["added_latency_s"] == pytest.approx(4.4)
    # 7 requests waited 0, 0, 0, 0.1, 0.3, 2, 2: p50 the 4th, p99 the 7th
    assert (total["wake_latency_p50_s"], total["wake_latency_p99_s"]) == (0.1, 2.0)
    assert result["settings"]["wake_s"] == {"host": 0.1, "disk": 0.3, "zero": 2.0}
    assert "| 1/1/2 | 0.1s / 2s |" in to_markdown(result)


def ember_simulate(trace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", "simulate", "--trace", str(trace), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_simulate_tiered_cli(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    lines = [
        {"event": "request", "model": "m", "ts": t + 1, "arrival": t, "start": t, "end": t + 1}
        for t in (0.0, 30.0, 5000.0)
    ]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    out = ember_simulate(
        events,
        "--policy",
        "tiered",
        "--wake",
        "host=0.05",
        "--wake",
        "disk=0.2",
        "--format",
        "json",
    )
    assert out.returncode == 0, out.stderr
    total = json.loads(out.stdout)["total"]
    # 0: cold; 30: hot; 5000: 4969 s after serving, past disk (60 + 1200 + 3600): cold again
    assert total["wakes"] == {"host": 0, "disk": 0, "zero": 2} and total["requests"] == 3
    for args, message in [
        (["--wake", "ram=1"], "--wake 'ram=1': expected LEVEL=SECONDS, LEVEL one of host, disk"),
        (["--wake", "host=-1"], "--wake 'host=-1': the time must be 0 or more seconds"),
        (["--wake", "disk=0.1", "--cold-start", "-1"], "must not be negative"),
    ]:
        bad = ember_simulate(events, "--policy", "tiered", *args)
        assert bad.returncode == 2 and bad.stdout == ""
        assert bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
    wrong = ember_simulate(events, "--policy", "hybrid", "--wake", "host=0.05")
    assert wrong.returncode == 2
    assert wrong.stderr == "ember simulate: --wake applies to --policy tiered only\n"
