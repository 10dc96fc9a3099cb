"""The short soak in CI: the whole stack under load and chaos for ~25 s (scripts/soak.py), LLM
streams, disconnects and cold starts included."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.fixtures.llm_clients import LEFT, OUTCOMES, STREAMED, WHOLE
from tests.servers import ROOT

KEYS = {
    "sent": int,
    "answered": dict,
    "lost": int,
    "hung": int,
    "wrong_outputs": int,
    "storm_wrong": int,
    "storm": dict,
    "leaked_processes": int,
    "leaked_files": int,
    "bad_cache_entries": int,
    "max_rss_mb": float,
    "llm_sent": int,
    "llm_outcomes": dict,
    "leaked_sequences": int,
}


def soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_short_soak_loses_nothing_hangs_nothing_leaks_nothing(
    tmp_path: Path, tiny_llm_dir: Path
) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            "scripts/soak.py",
            "--minutes",
            "0.4",
            "--concurrency",
            "12",
            "--llm-clients",
            "3",
            "--tiny-llm",
            str(tiny_llm_dir),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    for key, kind in KEYS.items():
        assert isinstance(result[key], kind), key
    assert result["lost"] == result["hung"] == result["wrong_outputs"] == 0
    assert result["storm_wrong"] == 0 and sum(result["storm"].values()) > 0
    assert result["leaked_processes"] == result["leaked_files"] == result["bad_cache_entries"] == 0
    assert result["sent"] == sum(result["answered"].values())
    # a load did run: the MLPs' requests and the LLM's together (the LLM's tokens take their
    # share of two cores that a busy CI shares too)
    assert result["sent"] + result["llm_sent"] > 80
    assert set(result["answered"]) <= {"200", "502", "503", "504"}
    assert result["event_log_matches_answers"]
    assert result["chaos"].get("kill_replica", 0) >= 1  # the chaos happened
    assert result["replicas_started"] >= 3 and result["s3_requests_through_proxy"] >= 2
    assert result["hostile_wrong"] == 0 and sum(result["hostile_sent"].values()) >= 5
    # the LLM's requests: each one outcome, its own line in the log, no sequence left running
    outcomes = result["llm_outcomes"]
    assert set(outcomes) <= set(OUTCOMES)
    assert result["llm_sent"] == sum(outcomes.values()) and result["llm_lost"] == 0
    assert outcomes.get(WHOLE, 0) + outcomes.get(STREAMED, 0) >= 1  # its first wave is warm
    assert outcomes.get(LEFT, 0) >= 1  # the leak check's stream, at least
    assert result["leaked_sequences"] == 0 and result["sequences_drop_s"] < 5
    assert result["llm_event_log_matches"] and result["llm_replica_starts"] >= 1
    assert "| requests sent" in run.stdout and "soak: ok" in run.stdout


def test_any_loss_hang_or_leak_fails_the_soak() -> None:
    soak = soak_module()
    good = {
        "lost": 0,
        "hung": 0,
        "wrong_outputs": 0,
        "hostile_wrong": 0,
        "storm_wrong": 0,
        "leaked_processes": 0,
        "leaked_files": 0,
        "bad_cache_entries": 0,
        "max_rss_mb": 50.0,
        "rss_limit_mb": 512.0,
        "event_log_matches_answers": True,
        "llm_event_log_matches": True,
        "leaked_sequences": 0,
        "activator_exit_code": 0,
    }
    assert soak.failed(good) == []
    for key, bad in [
        ("lost", 1),
        ("hung", 2),
        ("hostile_wrong", 1),
        ("wrong_outputs", 1),
        ("storm_wrong", 4),
        ("leaked_processes", 1),
        ("leaked_files", 3),
        ("bad_cache_entries", 1),
        ("leaked_sequences", 2),
        ("leaked_sequences", -1),  # no replica's metrics to read: not checked is not passed
        ("llm_event_log_matches", False),
        ("max_rss_mb", 600.0),
        ("activator_exit_code", -15),
    ]:
        assert soak.failed({**good, key: bad}) == [key]


def test_bad_arguments_are_refused() -> None:
    run = subprocess.run(
        [sys.executable, "scripts/soak.py", "--minutes", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "--minutes" in run.stderr
