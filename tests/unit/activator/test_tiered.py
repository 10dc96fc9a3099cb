"""The tiered sleep policy's plans and ``--wake``, on hand-made histories (its replay over traces:
tests/unit/analysis/test_simulate_tiered.py)."""

from __future__ import annotations

import re

import pytest

from activator.policy import History
from activator.tiered import Tiered, TierPlan, WakeCosts, parse_wakes
from contracts.errors import ConfigError


def history_of(*times: float) -> History:
    history = History()
    for t in times:
        history.observe(t)
    return history


def test_the_prediction_sleeps_at_once_and_waits_on_disk_for_a_known_period() -> None:
    every_10_min = Tiered().decide(history_of(*(t * 600.0 for t in range(7))))
    assert every_10_min.host_at_s == 0.0  # p5 540 s is past the 60 s break-even
    assert every_10_min.level_at(600.0) == "host"
    every_3_h = Tiered().decide(history_of(*(t * 10800.0 for t in range(7))))
    # 0 + 20 min + 1 h would be zero by 3 h; held on disk to the p99 + 10%, 11880 s
    assert every_3_h.zero_at_s == pytest.approx(11880.0)
    assert every_3_h.level_at(10800.0) == "disk"


def test_a_level_that_wakes_no_faster_than_the_next_is_skipped() -> None:
    plan = Tiered(wake=WakeCosts(host=0.2, disk=0.2, zero=2.0)).decide(History())
    assert plan == TierPlan(240.0, 240.0, 3840.0, plan.why)  # hot 1200 * 0.2, no host
    plan = Tiered(wake=WakeCosts(host=0.05, disk=3.0, zero=2.0)).decide(History())
    assert plan.zero_at_s == plan.disk_at_s == 1260.0  # disk slower than a cold start


def test_parse_wakes() -> None:
    assert parse_wakes([]) == WakeCosts(0.05, 0.15)
    assert parse_wakes(["host=0.1", "disk=0"]) == WakeCosts(0.1, 0.0)
    for bad, message in [
        ("ram=1", "--wake 'ram=1': expected LEVEL=SECONDS, LEVEL one of host, disk"),
        ("zero=1", "--wake 'zero=1': expected LEVEL=SECONDS"),
        ("host", "--wake 'host': expected LEVEL=SECONDS"),
        ("host=-0.1", "--wake 'host=-0.1': the time must be 0 or more seconds"),
        ("disk=nan", "--wake 'disk=nan': the time must be 0 or more seconds"),
        ("disk=soon", "--wake 'disk=soon': 'soon' is not a number of seconds"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_wakes([bad])
