"""A group's replicas are billed once, its members' requests under it, against hand computation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from analysis.cost import report
from analysis.cost_groups import GroupConfig, from_stack, membership
from analysis.cost_markdown import headline, to_markdown
from contracts.stack import load_stack
from tests.servers import ROOT
from tests.unit.analysis.test_cost import ev, typed


def on(model: str, kind: str, ts: float, **fields: Any) -> dict[str, Any]:
    return {**ev(kind, ts, **fields), "model": model}


def nap(model: str, ts: float) -> dict[str, Any]:
    return on(model, "sleep", ts, group="shared", replica=1, level="host")


# one replica of the group "shared" (an L4) serves minilm and bert; both sleep on it, which is
# how the log says they are its members
GROUP = [
    on("shared", "replica_starting", 0, replica=1, gpu_type="L4", price_per_hour=None),
    on("shared", "replica_ready", 10, replica=1),
    on("minilm", "request", 11, arrival=0, start=10, end=11, status=200, cold=True, queue_s=10,
       replica=1),
    on("bert", "request", 22, arrival=20, start=20, end=22, status=200, queue_s=0, replica=1),
    nap("bert", 30),
    nap("minilm", 40),
    on("shared", "replica_stopped", 70, replica=1),
    on("shared", "state", 3600, **{"from": "zero", "to": "zero"}),
]  # fmt: skip


def test_a_group_is_billed_once_and_its_members_requests_are_counted_under_it() -> None:
    r = report(typed(GROUP), prices={"minilm": 3.6})
    shared, minilm, bert = r["models"]  # the group's row, then its members'
    assert (shared["model"], shared["kind"], shared["members"]) == (
        "shared", "group", ["minilm", "bert"],
    )  # fmt: skip
    g = shared["replica_seconds"]
    # its replica: loads 0-10, up 10-70, serves [10,11] for minilm and [20,22] for bert
    assert (g["loading"], g["busy"], g["warm_idle"], g["billed"]) == (10, 3, 57, 70)
    # the group's own price (its L4), not a member's: --price minilm= prices minilm's sleeps
    assert (shared["price_per_hour"], shared["price_source"]) == (0.71, "gpu_type")
    assert shared["cost_usd"] == pytest.approx(70 * 0.71 / 3600, abs=1e-6)
    assert shared["always_on_cost_usd"] == 0.71  # one replica always on for the group
    assert (shared["requests"], shared["cold_starts"], shared["cold_added_latency_p50_s"]) == (
        2, 1, 10,
    )  # fmt: skip
    # the members: their requests, no replica time, cost or price of their own
    assert (minilm["kind"], minilm["group"], minilm["requests"], minilm["cold_starts"]) == (
        "member", "shared", 1, 1,
    )  # fmt: skip
    assert (bert["requests"], bert["cold_starts"], bert["price_per_hour"]) == (1, 0, None)
    for member in (minilm, bert):
        assert member["replica_seconds"] is None and member["cost_usd"] is None
        assert member["always_on_cost_usd"] is None and member["replica_starts"] == 0
    # minilm sleeps at its own price (30 s at 3.6 per hour), bert at its group's (40 s at 0.71)
    assert (minilm["sleep"]["saved_usd"], bert["sleep"]["saved_usd"]) == (0.03, 0.007889)
    # the total: always-on counted once, requests once, no warning for the unpriced members
    t = r["total"]
    assert (t["always_on_cost_usd"], t["cost_usd"], t["requests"]) == (0.71, shared["cost_usd"], 2)
    assert t["replica_starts"] == 1 and r["warnings"] == []
    assert list(r["timeline"]) == ["shared"]
    assert sum(r["timeline"]["shared"]["requests_per_s"]) * r["timeline"]["shared"]["bucket_s"] == (
        pytest.approx(2)
    )  # the group's chart counts its members' requests


def test_the_markdown_shows_members_under_their_group() -> None:
    r = report(typed(GROUP))
    md = to_markdown(r)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| shared (group) | GPU L4 | 2 | 1 (50.0%) | 10.00 / 10.00 s |")
    assert rows[2] == (
        "| minilm (in shared) | as its group | 1 | 1 (100.0%) | 10.00 / 10.00 s | "
        "in the shared row | - | - | - | - |"
    )
    assert rows[3].startswith("| bert (in shared) | as its group | 1 | 0 (0.0%) | - |")
    assert rows[4].startswith("| **total** |  | 2 | 1 (50.0%) |")
    assert headline(r).startswith(
        "Spent $0.0138; one always-on replica per model or group: $0.7100"
    )
    assert "billed once, in the group's row" in md


def test_an_unpriced_group_warns_once_and_a_members_price_stands_in() -> None:
    cpu = [{**e, "gpu_type": None} for e in GROUP]
    r = report(typed(cpu))
    assert len(r["warnings"]) == 1 and r["warnings"][0].startswith("no price for shared:")
    assert "its members' model configs" in r["warnings"][0]
    priced = report(typed(cpu), prices={"bert": 1.8, "minilm": 0.9})["models"][0]
    assert (priced["price_per_hour"], priced["price_source"]) == (1.8, "members")
    # the group's own --price comes first
    own = report(typed(cpu), prices={"bert": 1.8, "shared": 0.36})["models"][0]
    assert (own["price_per_hour"], own["price_source"]) == (0.36, "--price")


def test_without_sleeps_the_config_says_who_is_in_a_group() -> None:
    awake = [e for e in GROUP if e["event"] != "sleep"]
    # neither the events nor a config say: as before, each name is a row of its own
    alone = report(typed(awake))
    assert [m["kind"] for m in alone["models"]] == ["model", "model", "model"]
    config = {"shared": GroupConfig(members=("minilm", "bert"), price_per_hour=0.5, cpus=2)}
    r = report(typed([{**e, "gpu_type": None} for e in awake]), groups=config)
    shared, *members = r["models"]
    assert shared["kind"] == "group" and [m["group"] for m in members] == ["shared", "shared"]
    # the config's price and cores where the events carry none
    assert (shared["price_per_hour"], shared["price_source"], shared["cpus"]) == (0.5, "config", 2)
    assert shared["replica_seconds"]["busy"] == 3 and r["total"]["always_on_cost_usd"] == 0.5


def test_membership_events_win_over_the_config() -> None:
    config = {"old": GroupConfig(members=("minilm", "solo"))}
    assert membership(typed(GROUP), config) == {"minilm": "shared", "bert": "shared", "solo": "old"}
    assert membership(typed(GROUP), {}) == {"bert": "shared", "minilm": "shared"}


def test_from_stack_reads_a_groups_members_and_price() -> None:
    groups = from_stack(load_stack(ROOT / "examples" / "group.yaml"))
    assert groups == {
        "shared": GroupConfig(
            members=("mlp", "minilm"), gpu_type=None, device=groups["shared"].device,
            price_per_hour=0.0892, cpus=2,
        )
    }  # fmt: skip


def test_the_cli_takes_the_stack_config(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    awake = [
        {**e, "model": {"minilm": "mlp"}.get(e["model"], e["model"])}
        for e in GROUP
        if e["event"] != "sleep"
    ]
    path.write_text("".join(json.dumps({**e, "gpu_type": None}) + "\n" for e in awake))
    cmd = [sys.executable, "-m", "ember", "cost-report", "--events", str(path), "--format", "json"]
    config = ["--config", str(ROOT / "examples" / "group.yaml")]
    out = subprocess.run([*cmd, *config], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert [(m["model"], m["kind"]) for m in r["models"]] == [
        ("shared", "group"), ("mlp", "member"), ("bert", "model"),
    ]  # fmt: skip
    assert r["models"][0]["price_per_hour"] == 0.0892
    bad = [*cmd, "--config", str(tmp_path / "missing.yaml")]
    missing = subprocess.run(bad, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert missing.returncode == 2 and "ember cost-report:" in missing.stderr
