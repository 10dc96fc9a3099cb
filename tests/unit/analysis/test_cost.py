"""``ember cost-report`` against hand-computed event logs, to the cent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from activator.errors import ConfigError
from analysis.cost import read_log, report
from analysis.cost_markdown import to_markdown
from contracts.events import Event, from_record
from tests.servers import ROOT


def typed(records: Iterable[dict[str, Any]]) -> list[Event]:
    """The events these records (each as its line holds it) decode to."""
    events = [from_record(r) for r in records]
    assert None not in events, events
    return [e for e in events if e is not None]


def ev(kind: str, ts: float, **fields: Any) -> dict[str, Any]:
    return {"event": kind, "model": "m", "ts": ts, "mono": ts, **fields}


LOG = [
    ev("replica_starting", 0, replica=1, gpu_type="L4", price_per_hour=None),
    ev("replica_ready", 10, replica=1),
    ev("request", 11, arrival=0, start=10, end=11, status=200, cold=True, queue_s=10, replica=1),
    ev("request", 22, arrival=20, start=20, end=22, status=200, cold=False, queue_s=0, replica=1),
    ev("replica_stopped", 70, replica=1, reason="keep-alive expired"),
    ev("prewarm", 100, until=1000, source="admin"),
    ev("replica_starting", 100, replica=2, gpu_type="L4"),
    ev("replica_ready", 105, replica=2),
    ev("replica_stopped", 400, replica=2, reason="put to sleep"),
    ev("state", 3600, **{"from": "zero", "to": "zero"}),
]


def test_figures_match_the_hand_computation() -> None:
    r = report(typed(LOG))
    (m,) = r["models"]
    g = m["replica_seconds"]
    # replica 1: loads 0-10, up 10-70, serves [10,11] and [20,22]: 3 s busy, 57 idle, billed 70 s
    # replica 2: a warm window started it, it served nothing: 295 s pre-warmed-unused, billed 300
    assert (g["loading"], g["busy"], g["warm_idle"], g["prewarmed_unused"]) == (15, 3, 57, 295)
    assert g["billed"] == 370
    assert m["price_per_hour"] == 0.71
    assert round(m["cost_usd"], 2) == 0.07  # 370 s x 0.71 / 3600 = 0.07297
    assert m["cost_usd"] == pytest.approx(370 * 0.71 / 3600, abs=1e-6)
    assert round(m["always_on_cost_usd"], 2) == 0.71  # one replica for the 3600 s span
    assert round(m["saving_usd"], 2) == 0.64
    assert m["requests"] == 2 and m["cold_starts"] == 1 and m["cold_start_rate"] == 0.5
    assert m["cold_added_latency_p50_s"] == 10 and m["cold_added_latency_p99_s"] == 10
    assert m["cost_per_1000_requests_usd"] == pytest.approx(370 * 0.71 / 3600 / 2 * 1000, abs=1e-6)
    assert r["total"]["cost_usd"] == m["cost_usd"] and r["notes"] == r["warnings"] == []
    assert (m["resource"], m["price_source"], m["loss_reason"]) == ("GPU", "gpu_type", None)
    assert m["saving_pct"] == pytest.approx((0.71 - 370 * 0.71 / 3600) / 0.71 * 100, abs=1e-3)


def test_billing_minimum_granularity_and_price_override() -> None:
    r = report(typed(LOG), prices={"L4": 1.0}, granularity_s=60, minimum_s=120)
    # 70 s -> 120 s (the minimum); 300 s -> 300 s (already whole minutes)
    assert r["models"][0]["replica_seconds"]["billed"] == 420
    assert r["models"][0]["cost_usd"] == pytest.approx(420 / 3600, abs=1e-6)


def test_an_unpriced_model_is_costed_at_zero_and_said() -> None:
    log = [{**e, "gpu_type": None} if e["event"] == "replica_starting" else e for e in LOG]
    r = report(typed(log))
    assert r["models"][0]["cost_usd"] == 0 and r["models"][0]["price_per_hour"] is None
    assert (
        "no price for m" in r["warnings"][0] and "--price cpu=USD_PER_CORE_HOUR" in r["warnings"][0]
    )
    unknown_gpu = [
        {**e, "gpu_type": "B200"} if e["event"] == "replica_starting" else e for e in LOG
    ]
    assert "--price B200=USD_PER_HOUR" in report(typed(unknown_gpu))["warnings"][0]


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="non-negative"):
        report(typed(LOG), prices={"L4": -1})
    with pytest.raises(ConfigError, match="granularity"):
        report(typed(LOG), granularity_s=0)


def test_a_torn_last_line_is_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in LOG) + '{"event": "requ')
    events, skipped = read_log(path)
    assert len(events) == len(LOG) and skipped == 1
    r = report(events, skipped=skipped)
    assert "1 unreadable line" in r["notes"][0]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    with pytest.raises(ConfigError, match="no Ember events"):
        read_log(empty)


def test_a_rotated_log_is_read_oldest_first_and_ill_typed_lines_are_counted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(e) + "\n" for e in LOG]
    (tmp_path / "events.jsonl.2").write_text("".join(lines[:3]))
    (tmp_path / "events.jsonl.1").write_text(
        "".join(lines[3:6]) + '{"event":"request","model":"m","ts":"soon"}\n'
    )
    path.write_text(
        "".join(lines[6:])
        + '{"event":"request","model":"m","ts":30,"status":"ok","start":1,"end":2}\n'
    )
    events, skipped = read_log(path)
    assert events == typed(LOG) and skipped == 2
    r = report(events, skipped=skipped)
    assert r == {**report(typed(LOG)), "notes": r["notes"]}  # the same figures as the whole log
    assert "2 unreadable line(s) skipped" in r["notes"][0]
    # the cost report reads a log whose newest file is gone (rotated, not yet reopened) too
    path.unlink()
    assert read_log(path)[0] == typed(LOG[:6])
    (tmp_path / "events.jsonl.9").mkdir()  # a file it cannot read: no report leaves it out
    with pytest.raises(ConfigError, match=r"cannot read the event log: .*events\.jsonl\.9"):
        read_log(path)
    (tmp_path / "events.jsonl.9").rmdir()
    for old in tmp_path.glob("events.jsonl.*"):
        old.unlink()
    with pytest.raises(ConfigError, match="cannot read the event log"):
        read_log(path)


def test_cpu_models_are_priced_per_core_hour_or_per_model() -> None:
    cpu = [
        {**e, "gpu_type": None, "cpus": 4} if e["event"] == "replica_starting" else e for e in LOG
    ]
    r = report(typed(cpu), prices={"cpu": 0.05})
    (m,) = r["models"]
    assert (m["resource"], m["price_per_hour"], m["price_source"]) == ("CPU", 0.2, "cpu")
    assert m["cost_usd"] == pytest.approx(370 * 0.2 / 3600, abs=1e-6)
    assert r["notes"] == [] and r["warnings"] == []
    assert "| m | CPU 4 cores |" in to_markdown(r) and "GPU" not in to_markdown(r)
    # without a core count in the events: one core, and the report says so
    one = [{**e, "cpus": None} for e in cpu]
    r = report(typed(one), prices={"cpu": 0.05})
    assert r["models"][0]["price_per_hour"] == 0.05
    assert r["notes"] == ["m is priced as 1 core: its events carry no CPU count (cpus)"]
    # the config's price_per_hour beats the per-core price; --price MODEL= beats both
    configured = [{**e, "price_per_hour": 0.09} for e in cpu]
    assert report(typed(configured), prices={"cpu": 0.05})["models"][0]["price_per_hour"] == 0.09
    per_model = report(typed(configured), prices={"cpu": 0.05, "m": 1.5})["models"][0]
    assert (per_model["price_per_hour"], per_model["price_source"]) == (1.5, "--price")


def test_a_loss_is_labelled_with_its_reason() -> None:
    # a replica up 20 s of a 30 s log: billed the 60 s minimum, always-on costs 30 s
    log = [
        ev("replica_starting", 0, replica=1, price_per_hour=3.6),
        ev("replica_ready", 5, replica=1),
        ev("request", 6, arrival=0, start=5, end=6, status=200, cold=True, queue_s=5, replica=1),
        ev("replica_stopped", 20, replica=1),
        ev("state", 30, **{"from": "zero", "to": "zero"}),
    ]
    r = report(typed(log))
    (m,) = r["models"]
    assert (m["cost_usd"], m["always_on_cost_usd"], m["saving_usd"]) == (0.06, 0.03, -0.03)
    assert m["saving_pct"] == pytest.approx(-100)
    assert m["loss_reason"] == "the 60 s billing minimum per replica start"
    md = to_markdown(r)
    assert "Scale to zero cost $0.0300 more: a loss (see below)." in md
    assert (
        "- m: scale to zero cost $0.0300 more than always-on here, because of the 60 s "
        "billing minimum per replica start." in md
    )
    assert "-$0.0300 (loss)" in md
    # two replicas at once over the whole span cost more than one always on: another reason
    both = [*log[:-1], ev("replica_starting", 0, replica=2), ev("replica_stopped", 30, replica=2)]
    r = report(typed([*both, log[-1]]), minimum_s=0)
    assert r["models"][0]["loss_reason"].startswith("it ran more than one replica at a time")


def test_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in LOG))

    def cost(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ember", "cost-report", "--events", str(path), *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)

    out = cost("--format", "json", "--price", "L4=0.71")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"]["requests"] == 2
    assert cost("--format", "md").stdout.startswith("# Ember cost report")
    bad = cost("--price", "L4")
    assert bad.returncode == 2 and "GPU=USD_PER_HOUR, MODEL=USD_PER_HOUR or cpu=" in bad.stderr
    per_model = json.loads(cost("--format", "json", "--price", "m=3.6").stdout)["models"][0]
    assert (per_model["price_per_hour"], per_model["cost_usd"]) == (3.6, 0.37)
    page = cost("--format", "html")
    assert page.returncode == 0 and page.stdout.startswith("<!doctype html>"), page.stderr
    negative = cost("--price", "L4=-3")
    assert negative.returncode == 2 and "non-negative" in negative.stderr


def run(kind: str, ts: float, run_id: str) -> dict[str, Any]:
    return {"event": kind, "model": "", "ts": ts, "mono": ts, "run": run_id}


# run a starts replica 1 and crashes (SIGKILL: no stop, no replica_stopped) at its last event,
# 50; run b numbers its replicas from 1 again, serves, and stops cleanly
CRASHED = [
    run("activator_start", 0, "a"),
    ev("replica_starting", 10, replica=1, gpu_type="L4"),
    ev("replica_ready", 20, replica=1),
    ev("request", 30, arrival=10, start=20, end=30, status=200, cold=True, queue_s=10, replica=1),
    ev("state", 50, **{"from": "ready", "to": "ready"}),
    run("activator_start", 100, "b"),
    ev("replica_starting", 110, replica=1, gpu_type="L4"),
    ev("replica_ready", 115, replica=1),
    ev(
        "request", 120, arrival=110, start=115, end=120, status=200, cold=True, queue_s=5, replica=1
    ),
    ev("replica_stopped", 200, replica=1, reason="activator shutting down"),
    run("activator_stop", 201, "b"),
]


def test_a_crashed_runs_replicas_are_billed_to_its_last_event_and_said() -> None:
    r = report(typed(CRASHED), minimum_s=0)
    (m,) = r["models"]
    assert m["replica_starts"] == 2 and m["requests"] == 2 and m["cold_starts"] == 2
    g = m["replica_seconds"]
    # run a: 10-50 (loading 10, up 30 with 10 busy); run b: 110-200 (loading 5, up 85, 5 busy)
    assert (g["loading"], g["busy"], g["warm_idle"]) == (15, 15, 100)
    assert g["billed"] == 40 + 90
    assert r["runs"] == {
        "count": 2,
        "closed_at_last_event": 1,
        "replicas_closed": 1,
        "sleeps_closed": 0,
    }
    assert any("1 run(s) of the activator ended without stopping" in n for n in r["notes"])
    assert "ended without stopping" in to_markdown(r)


def test_a_log_of_clean_runs_closes_nothing() -> None:
    clean = [e for e in CRASHED if e["ts"] >= 100]
    r = report(typed(clean), minimum_s=0)
    assert r["runs"]["closed_at_last_event"] == 0 and r["notes"] == []
    assert r["models"][0]["replica_seconds"]["billed"] == 90


def test_a_crashed_runs_sleeps_end_at_its_last_event() -> None:
    def on_group(kind: str, ts: float, **fields: Any) -> dict[str, Any]:
        return {**ev(kind, ts, **fields), "model": "shared"}

    def member(kind: str, ts: float, **fields: Any) -> dict[str, Any]:
        return {**ev(kind, ts, **fields), "model": "a", "group": "shared", "replica": 1}

    log = [
        run("activator_start", 0, "a"),
        on_group("replica_starting", 0, replica=1, gpu_type="L4"),
        on_group("replica_ready", 10, replica=1),
        member("sleep", 20, level="host", reason="tiered policy: idle 60s"),
        on_group("state", 30, **{"from": "ready", "to": "ready"}),  # the crash: after this
        run("activator_start", 1000, "b"),
        on_group("replica_starting", 1000, replica=1, gpu_type="L4"),
        on_group("replica_ready", 1010, replica=1),
        on_group("replica_stopped", 1100, replica=1, reason="activator shutting down"),
        run("activator_stop", 1101, "b"),
    ]
    r = report(typed(log), minimum_s=0)
    rows = {row["model"]: row for row in r["models"]}
    # asleep 20-30 on run a's replica, never on run b's: 10 s, not 1,080
    assert rows["a"]["sleep"]["seconds"]["host"] == 10
    assert r["runs"]["sleeps_closed"] == 1 and r["runs"]["replicas_closed"] == 1
    assert rows["shared"]["replica_seconds"]["billed"] == 30 + 100
