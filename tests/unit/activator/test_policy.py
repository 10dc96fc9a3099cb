"""Keep-alive/pre-warm policies: parsing, learning, and the activator running them (their replay
over traces is tests/unit/analysis/test_simulate.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from activator.policy import Fixed, History, Hybrid, parse_policy
from contracts.errors import ConfigError


def test_parse_policy() -> None:
    assert parse_policy("fixed:10m") == Fixed(600, name="fixed:10m")
    assert parse_policy("fixed:90s").keep_alive_s == 90  # type: ignore[attr-defined]
    assert parse_policy("knative").keep_alive_s == 90  # type: ignore[attr-defined]
    assert parse_policy("hybrid").name == "hybrid"
    assert parse_policy("fixed:1h30m").keep_alive_s == 5400  # type: ignore[attr-defined]
    for bad, message in [
        ("fixed", "policy 'fixed' needs a duration: fixed:DURATION, e.g. fixed:10m"),
        ("fixed:10", "policy 'fixed:10' needs a unit: fixed:10s, fixed:10m or fixed:10h"),
        ("fixed:0m", "policy 'fixed:0m': the duration must be longer than 0"),
        ("fixed:10 minutes", "policy 'fixed:10 minutes': '10 minutes' is not a duration"),
        ("lru", "unknown policy 'lru': fixed:DURATION"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_policy(bad)


def test_one_sample_is_not_a_pattern() -> None:
    history = History()
    for t in (0, 3600):
        history.observe(t)
    decision = Hybrid().decide(history)
    assert decision.prewarm_s == 0 and decision.keep_alive_s == 600 and "too few" in decision.why


async def test_the_activator_runs_a_learned_policy_and_logs_its_decisions(tmp_path: Path) -> None:
    import asyncio
    import time

    from activator.events import EventLog, read_events
    from contracts.events import PolicyDecision
    from tests.unit.activator.test_pool import FakeScaler, pool_for

    events = EventLog(tmp_path / "events.jsonl")
    scaler = FakeScaler()
    pool = pool_for(scaler, events, policy="hybrid", keep_alive_s=600)
    now = time.time()
    pool.learn([now - 1800 * k for k in range(12, 0, -1)])  # called every 30 min, from the log
    pool.release(await pool.acquire())  # this half-hour's call
    deadline = time.monotonic() + 3
    while pool.state != "zero" and time.monotonic() < deadline:  # noqa: ASYNC110 - a test's poll
        await asyncio.sleep(0.02)
    # the pattern says: unload now, load again before the next call (about 30 min from now)
    assert pool.state == "zero" and pool.keep_alive_s == 0
    timer = pool.prewarm_timer
    assert timer is not None
    wait = timer.when() - asyncio.get_running_loop().time()
    assert 1500 < wait < 1800
    await pool.aclose()
    events.close()
    (decision,) = [
        e for e in read_events(tmp_path / "events.jsonl") if isinstance(e, PolicyDecision)
    ]
    assert decision.policy == "hybrid" and (decision.prewarm_s or 0) > 0
    assert "histogram" in (decision.why or "")


def test_an_unknown_policy_in_ember_yaml_is_refused(tmp_path: Path) -> None:
    from contracts.stack import load_stack

    (tmp_path / "m.yaml").write_text("name: m\n")
    (tmp_path / "ember.yaml").write_text("models:\n  - {config: m.yaml, policy: lru}\n")
    with pytest.raises(ConfigError, match="unknown policy 'lru'"):
        load_stack(tmp_path / "ember.yaml")
