"""What models saved by sleeping on a group's shared replicas, against hand-computed logs."""

from __future__ import annotations

from typing import Any

from analysis.cost import report
from analysis.cost_markdown import to_markdown
from analysis.cost_sleep import sleep_or_wake
from contracts.events import Sleep, Wake
from tests.unit.analysis.test_cost import LOG, ev, typed


def sleeping(kind: str, ts: float, model: str, **fields: Any) -> dict[str, Any]:
    return {**ev(kind, ts, **fields), "model": model, "group": "shared", "replica": 3}


# a group's replica serves minilm and bert; they sleep on it, wake, and sleep again
GROUP = [
    ev("replica_starting", 0, replica=3, gpu_type="L4", model="shared"),
    ev("replica_ready", 10, replica=3, model="shared"),
    {**ev("request", 12, arrival=10, start=10, end=12, status=200, replica=3), "model": "minilm"},
    sleeping("sleep", 100, "minilm", level="host", reason="tiered policy: idle 60s"),
    sleeping("sleep", 200, "bert", level="host", reason="tiered policy: idle 60s"),
    sleeping("wake", 300, "bert", level="host", wake_s=None),  # a wake not measured
    sleeping("sleep", 400, "minilm", level="disk", reason="tiered policy: idle 300s"),
    sleeping("sleep", 500, "bert", level="host", reason="tiered policy: idle 60s"),
    sleeping("wake", 1000, "minilm", level="disk", wake_s=0.008),
    sleeping("sleep", 1100, "minilm", level="host", reason="tiered policy: idle 60s"),
    sleeping("wake", 1150, "minilm", level="host", wake_s=0.002),
    sleeping("sleep", 1200, "minilm", level="host", reason="tiered policy: idle 60s"),
    # the replica stops with both asleep on it: their sleeps end here
    ev("replica_stopped", 1500, replica=3, model="shared", reason="keep-alive expired"),
    sleeping("sleep", 1600, "bert", level="disk"),  # on a stopped replica: no sleep
    {**ev("warm_end", 1700), "model": "minilm"},
    {**ev("sleep", 1800), "model": "minilm"},  # a log from before warm_end: no level, no sleep
    ev("state", 3600, model="shared", **{"from": "zero", "to": "zero"}),
]
# minilm at its own price, bert (no price of its own) at its group's
PRICES = {"minilm": 3.6, "shared": 0.72}


def test_sleeping_on_a_shared_replica_is_counted_per_level_to_its_wake_or_the_stop() -> None:
    r = report(typed(GROUP), prices=PRICES)
    rows = {m["model"]: m for m in r["models"]}
    assert rows["shared"]["sleep"] is None  # the group's replica is billed in its own row
    minilm, bert = rows["minilm"]["sleep"], rows["bert"]["sleep"]
    # minilm: host 100-400, 1100-1150, 1200-1500 (the stop); disk 400-1000
    assert minilm["seconds"] == {"host": 650, "disk": 600}
    assert minilm["device_seconds_saved"] == 1250 and minilm["groups"] == ["shared"]
    assert minilm["saved_usd"] == 1.25  # 1,250 s at minilm's 3.6 per hour
    assert minilm["wakes"] == {
        "host": {"count": 1, "wake_s_p50": 0.002},
        "disk": {"count": 1, "wake_s_p50": 0.008},
    }
    # bert: host 200-300, then 500 until the replica stopped at 1500; at the group's 0.72 per hour
    assert bert["seconds"] == {"host": 1100, "disk": 0} and bert["saved_usd"] == 0.22
    assert bert["wakes"]["host"] == {"count": 1, "wake_s_p50": None}
    total = r["total"]["sleep"]
    assert total["seconds"] == {"host": 1750, "disk": 600} and total["device_seconds_saved"] == 2350
    assert (total["saved_usd"], total["unpriced"]) == (1.47, [])
    assert total["wakes"]["host"] == {"count": 2, "wake_s_p50": 0.002}
    # next to it, scale to zero: the group's replica ran 1,500 s of the 3,600 s span
    assert total["device_seconds_saved_by_zero"] == 2100


def test_without_any_price_sleeps_show_no_price() -> None:
    unpriced = [{**e, "gpu_type": None} for e in GROUP]  # a CPU group, no --price cpu=
    r = report(typed(unpriced))
    assert [m["sleep"]["saved_usd"] for m in r["models"] if m["sleep"]] == [None, None]
    assert r["total"]["sleep"]["saved_usd"] is None
    assert r["total"]["sleep"]["unpriced"] == ["minilm", "bert"]
    assert "| bert | shared | 1,100 / 0 s | 1,100 | no price | 1 / 0 | - |" in to_markdown(r)


def test_a_sleep_still_open_ends_with_the_log() -> None:
    log = [*GROUP[:4], ev("state", 600, model="shared", **{"from": "ready", "to": "ready"})]
    rows = {m["model"]: m for m in report(typed(log))["models"]}
    assert rows["minilm"]["sleep"]["seconds"] == {"host": 500, "disk": 0}


def test_markdown_reports_sleeping_and_says_what_it_means() -> None:
    md = to_markdown(report(typed(GROUP), prices=PRICES))
    assert "## Saved by sleeping" in md
    assert (
        "Sleeping saved 2,350 device-s (worth $1.47); scaling to zero saved 2,100 replica-s" in md
    )
    assert "| minilm | shared | 650 / 600 s | 1,250 | $1.25 | 1 / 1 | 2.0 / 8.0 ms |" in md
    assert "| bert | shared | 1,100 / 0 s | 1,100 | $0.2200 | 1 / 0 | - |" in md
    assert "| **total** |  | 1,750 / 600 s | 2,350 | $1.47 | 2 / 1 | 2.0 / 8.0 ms |" in md
    assert "one replica per model would have held a device for it" in md


def test_without_sleeps_nothing_is_added() -> None:
    r = report(typed(LOG))
    assert r["total"]["sleep"] is None and r["models"][0]["sleep"] is None
    assert "sleep" not in to_markdown(r).lower()


def test_sleeps_without_a_level_add_nothing() -> None:
    log = [
        *LOG[:-1],
        sleeping("sleep", 500, "m", level=None),
        sleeping("wake", 600, "m", level=None),
    ]
    r = report(typed([*log, LOG[-1]]))
    assert r["total"]["sleep"] is None
    # nor do they make m a group's member: it is billed as before
    (m,) = r["models"]
    assert (m["kind"], m["sleep"], m["cost_usd"]) == (
        "model",
        None,
        report(typed(LOG))["total"]["cost_usd"],
    )


def test_sleep_or_wake_on_its_own() -> None:
    record = sleeping("sleep", 10, "minilm", level="host")
    (nap, later, woken) = typed(
        [record, {**record, "ts": 20}, {**record, "event": "wake", "ts": 40, "wake_s": 0.01}]
    )
    assert isinstance(nap, Sleep) and isinstance(later, Sleep) and isinstance(woken, Wake)
    key = ("shared", 3)
    s = sleep_or_wake(None, nap, key, stopped=None)
    assert s is not None and s.asleep == {key: ("host", 10)}
    assert sleep_or_wake(s, later, key, stopped=None) is s  # asleep at host already
    assert s.asleep[key] == ("host", 10)
    # a sleep on a replica that had stopped counts nothing
    assert sleep_or_wake(None, nap, key, stopped=5) is None
    woke = sleep_or_wake(s, woken, key, stopped=None)
    assert woke is s and s.seconds["host"] == 30 and s.wakes["host"] == [0.01]
    assert s.until(100) == {"host": 30, "disk": 0}
