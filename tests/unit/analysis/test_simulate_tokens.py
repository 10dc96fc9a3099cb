"""``ember simulate`` over an event log whose LLM requests carry tokens: each request's own
generation time, the figures weighted by tokens, ``--weight``; checked against hand-computed
replays of a log the test writes (an LLM with tokens beside a v2 model without)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from activator.policy import Decision, History, parse_policy
from activator.tiered import Tiered, WakeCosts
from analysis.simulate import load_trace, simulate, simulate_one, to_markdown
from analysis.simulate_trace import Arrival, Trace
from contracts.errors import ConfigError
from ember.cli import main
from tests.servers import ROOT

T0 = 1_700_000_000.0  # the log's wall clock; the trace counts from the first arrival


def request(model: str, arrival: float, end: float | None, **fields: Any) -> dict[str, Any]:
    """A ``request`` event as the activator writes it (``end`` None: never handed to a
    replica, as a 504 after a deadline)."""
    served = end is not None
    return {
        "event": "request",
        "v": 1,
        "model": model,
        "ts": T0 + (end if served else arrival + 30),
        "replica": 1,
        "endpoint": "chat/completions" if "prompt_tokens" in fields else "infer",
        "arrival": T0 + arrival,
        "start": T0 + arrival if served else None,
        "end": T0 + end if served else T0 + arrival + 30,
        "status": 200 if served else 504,
        "cold": False,
        "queue_s": 0.0,
        **fields,
    }


LOG = [
    # llm: a 30 s answer of 2,000 tokens, and one arriving while it is generated
    request("llm", 0, 30, prompt_tokens=100, completion_tokens=1900),
    request("llm", 10, 12, prompt_tokens=50, completion_tokens=50),
    request("mlp", 500, 501),
    request("llm", 1000, 1040, prompt_tokens=200, completion_tokens=800),
    request("llm", 1100, 1101, prompt_tokens=10, completion_tokens=90),
    request("llm", 1200, None),  # a deadline: no answer, no tokens
    request("mlp", 2900, 2901),
    {"event": "replica_stopped", "v": 1, "model": "mlp", "ts": T0 + 3000, "replica": 1},
]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in sorted(LOG, key=lambda e: e["ts"])))
    return path


def models(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["model"]: m for m in result["models"]}


def test_each_request_keeps_its_own_time_and_tokens(log: Path) -> None:
    traces = {t.name: t for t in load_trace(log)}
    assert traces["llm"].horizon_s == traces["mlp"].horizon_s == 3000.0
    assert traces["llm"].arrivals == [
        Arrival(0.0, 1, 30.0, (100, 1900)),
        Arrival(10.0, 1, 2.0, (50, 50)),
        Arrival(1000.0, 1, 40.0, (200, 800)),
        Arrival(1100.0, 1, 1.0, (10, 90)),
        Arrival(1200.0, 1, 0.0, None),
    ]
    assert traces["mlp"].arrivals == [Arrival(500.0, 1, 1.0), Arrival(2900.0, 1, 1.0)]


def test_fixed_keep_alive_weighted_by_tokens(log: Path) -> None:
    result = simulate(load_trace(log), parse_policy("fixed:10m"), price_per_hour=3.6)
    llm, mlp = models(result)["llm"], models(result)["mlp"]
    # llm: cold at 0; at 10 the 30 s answer is still being generated (warm); kept to 30 + 600;
    # cold at 1000 and kept from each request's end: 1040, 1101, then the 504 at 1200 to 1800
    assert (llm["requests"], llm["cold_starts"], llm["loads"]) == (5, 2, 2)
    assert llm["loaded_gpu_seconds"] == pytest.approx(630 + 800)
    # busy: [0, 30] (the 2 s answer inside it), [1000, 1040], [1100, 1101]
    assert llm["busy_gpu_seconds"] == pytest.approx(71)
    assert llm["warm_idle_gpu_seconds"] == pytest.approx(1430 - 71)
    assert llm["cost_usd"] == pytest.approx((1430 + 4) / 1000)  # $3.6/h: $0.001/s
    assert llm["tokens"] == {"prompt": 360, "completion": 2840, "requests_with_usage": 4}
    # 2 of 5 requests met a cold start, but 3,000 of the 3,200 tokens: the long answers
    assert llm["cold_start_rate"] == pytest.approx(0.4)
    assert llm["cold_start_tokens"] == 3000
    assert llm["cold_start_token_rate"] == pytest.approx(3000 / 3200)
    assert llm["added_latency_s_per_1k_tokens"] == pytest.approx(4 / 3.2)
    assert llm["cost_per_million_tokens_usd"] == pytest.approx(1.434 / 3200 * 1e6)
    # mlp (v2, no tokens): as ever, its token figures None, not zeros
    assert (mlp["cold_starts"], mlp["loaded_gpu_seconds"]) == (2, 701)
    assert mlp["cost_usd"] == pytest.approx(0.705)
    assert all(mlp[k] is None for k in ("tokens", "cold_start_tokens", "cold_start_token_rate"))
    assert mlp["cost_per_million_tokens_usd"] is None
    total = result["total"]
    assert (total["requests"], total["cold_starts"]) == (7, 4)
    assert total["p75_app_cold_start_rate"] == 1.0  # mlp's, the 2nd of 2
    assert total["tokens"] == llm["tokens"] and total["cold_start_tokens"] == 3000
    assert total["cold_start_token_rate"] == total["p75_app_cold_start_token_rate"] == 0.9375
    # over the models that said tokens: mlp's cost and cold starts are not the llm's tokens'
    assert total["added_latency_s_per_1k_tokens"] == pytest.approx(1.25)
    assert total["cost_per_million_tokens_usd"] == pytest.approx(448.125)
    assert total["cost_usd"] == pytest.approx(1.434 + 0.705)
    assert result["settings"]["weight"] == "requests"


def test_tiered_weighted_by_tokens(log: Path) -> None:
    policy = Tiered(wake=WakeCosts(host=0.05, disk=0.15))
    result = simulate(load_trace(log), policy, cold_start_s=2.0, price_per_hour=3.6)
    llm, mlp = models(result)["llm"], models(result)["mlp"]
    # hot 60 s after serving ends, host to 1,260 s, disk to 4,860 s (too few idle times for a
    # pattern). llm: zero at 0; hot at 10 (serving until 30); host at 1000 (970 s idle); hot at
    # 1100 (60 s after 1040); host at 1200 (99 s after 1101)
    assert llm["wakes"] == {"host": 2, "disk": 0, "zero": 1} and llm["cold_starts"] == 1
    # hot: serving [0, 30], 60, [1000, 1040], 60, [1100, 1101], 60, 60 after the 504 at 1200
    assert llm["loaded_gpu_seconds"] == pytest.approx(30 + 60 + 40 + 60 + 1 + 60 + 60)
    assert llm["host_memory_seconds"] == pytest.approx(910 + 39 + 1200)
    assert llm["loading_seconds"] == llm["added_latency_s"] == pytest.approx(2.1)
    assert llm["cost_usd"] == pytest.approx(0.3131)
    assert llm["cold_start_tokens"] == 2000  # only the first waited for a start from zero
    assert llm["cold_start_token_rate"] == pytest.approx(0.625)
    assert llm["added_latency_s_per_1k_tokens"] == pytest.approx(2.1 / 3.2)  # host wakes too
    assert llm["cost_per_million_tokens_usd"] == pytest.approx(0.3131 / 3200 * 1e6)
    assert mlp["wakes"] == {"host": 0, "disk": 1, "zero": 1} and mlp["tokens"] is None
    assert mlp["cost_usd"] == pytest.approx((122 + 2.15) / 1000)
    total = result["total"]
    assert total["cold_start_token_rate"] == total["p75_app_cold_start_token_rate"] == 0.625
    assert total["p75_app_cold_start_rate"] == 0.5  # llm 1/5, mlp 1/2
    assert total["cost_per_million_tokens_usd"] == pytest.approx(97.84375)
    assert total["added_latency_s_per_1k_tokens"] == pytest.approx(0.65625)
    # over requests: hot x2, host x2, disk, zero x2
    assert (total["wake_latency_p50_s"], total["wake_latency_p99_s"]) == (0.05, 2.0)


@dataclass(frozen=True)
class Unload:
    """Unload after each request, load again 100 s after it, keep 50 s."""

    name: str = "unload"

    def decide(self, history: History) -> Decision:
        return Decision(prewarm_s=100.0, keep_alive_s=50.0, why="test")


def test_a_request_being_served_holds_the_model_through_a_prewarm_policy() -> None:
    arrivals = [Arrival(0.0, 1, 30.0), Arrival(20.0, 1, 1.0), Arrival(125.0, 1, 2.0)]
    r = simulate_one(Trace("m", arrivals, 200.0), Unload(), cold_start_s=2.0, price_per_hour=3.6)
    # serving [0, 30]; the one at 20 finds it still loaded; the pre-warm from 20 runs [120, 170]
    # and holds the one at 125 (loaded to 127), unloaded then until 225, past the horizon
    assert (r["cold_starts"], r["loads"]) == (1, 2)
    assert r["loaded_gpu_seconds"] == pytest.approx(30 + 5 + 2)
    assert r["busy_gpu_seconds"] == pytest.approx(32)
    with pytest.raises(ValueError, match="count 1"):
        Arrival(0.0, 2, 1.0, (1, 1))


def test_weight_tokens_is_the_headline_and_json_has_both(log: Path, capsys: Any) -> None:
    args = ["simulate", "--trace", str(log), "--policy", "fixed:10m", "--price", "3.6"]
    assert main([*args, "--weight", "tokens"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("| policy | tokens | cold-start tokens | token rate |")
    assert lines[2] == "| fixed:10m | 3,200 | 3,000 | 93.75% | 93.75% | 2058 | $2.14 |"
    # $1.434 over 3,200 tokens: $448.125 per million, computed as 448.12499999999994
    assert "| llm | 360 / 2,840 | 4 | 93.75% | 1.25 s | $448.12 |" in lines
    assert "| **total** | 360 / 2,840 | 4 | 93.75% | 1.25 s | $448.12 |" in lines
    assert "| mlp |" not in text
    assert main(args) == 0  # by requests, the default: the token table still follows
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| fixed:10m | 7 | 4 | 57.14% | 100.00% | 2058 | $2.14 |"
    assert "| llm | 360 / 2,840 | 4 | 93.75% | 1.25 s | $448.12 |" in lines
    out = subprocess.run(
        [sys.executable, "-m", "ember", *args, "--weight", "tokens", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    total = json.loads(out.stdout)["total"]
    assert total["cold_start_rate"] == pytest.approx(4 / 7)
    assert total["cold_start_token_rate"] == 0.9375
    assert json.loads(out.stdout)["settings"]["weight"] == "tokens"


def test_a_trace_without_tokens_is_as_it_was(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "v2.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in LOG if e["model"] == "mlp"))
    result = simulate(load_trace(path), parse_policy("fixed:10m"))
    for fields in (result["total"], models(result)["mlp"]):
        assert fields["tokens"] is None and fields["cost_per_million_tokens_usd"] is None
        assert fields["cold_start_token_rate"] is None
        assert fields["added_latency_s_per_1k_tokens"] is None
    assert result["total"]["p75_app_cold_start_token_rate"] is None
    text = to_markdown(result)
    assert "tokens" not in text and text.count("\n") == 3  # the one table, as before
    with pytest.raises(ConfigError, match="--weight tokens: no request of this trace"):
        simulate(load_trace(path), parse_policy("fixed:10m"), weight="tokens")
    argv = ["simulate", "--trace", str(path), "--policy", "hybrid", "--weight", "tokens"]
    assert main(argv) == 2
    said = capsys.readouterr()
    assert said.out == "" and "carries tokens" in said.err
