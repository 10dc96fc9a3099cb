"""The cost report's tokens: what text generation and embedding answers said they used, per model,
the cost per million of them and the time to first token, against hand computation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from analysis.cost import read_log, report
from analysis.cost_markdown import to_markdown
from analysis.report_html import to_html
from contracts.events import Request, from_record
from tests.unit.analysis.test_cost import LOG, ev, typed
from tests.unit.analysis.test_cost_groups import GROUP


def on(model: str, kind: str, ts: float, **fields: Any) -> dict[str, Any]:
    return {**ev(kind, ts, **fields), "model": model}


def ask(model: str, ts: float, replica: int, **usage: Any) -> dict[str, Any]:
    """A request served in the second before ``ts``, with the usage fields given."""
    return on(
        model, "request", ts, arrival=ts - 1, start=ts - 1, end=ts, status=200, cold=False,
        queue_s=0, replica=replica, **usage,
    )  # fmt: skip


# llm: one replica at 3.6 USD/h up 0-360 s (0.36 USD), five requests: two streamed with usage,
# one streamed whose answer said none (its TTFT only), one whose usage is negative (not counted),
# one not streamed (its usage, no TTFT). mlp: a CPU model whose answers say no tokens.
TOKENS = [
    on("llm", "replica_starting", 0, replica=1, gpu_type="L4", price_per_hour=3.6),
    on("llm", "replica_ready", 10, replica=1),
    ask("llm", 20, 1, prompt_tokens=100, completion_tokens=50, ttft_s=0.2),
    ask("llm", 30, 1, prompt_tokens=300, completion_tokens=150, ttft_s=0.4),
    ask("llm", 40, 1, ttft_s=0.1),
    ask("llm", 50, 1, prompt_tokens=-5, completion_tokens=10, ttft_s=-0.3),
    ask("llm", 60, 1, prompt_tokens=600, completion_tokens=0),
    on("llm", "replica_stopped", 360, replica=1),
    on("mlp", "replica_starting", 400, replica=2, cpus=2, price_per_hour=0.36),
    on("mlp", "replica_ready", 401, replica=2),
    ask("mlp", 410, 2),
    on("mlp", "replica_stopped", 500, replica=2),
    on("llm", "state", 3600, **{"from": "zero", "to": "zero"}),
]


def rows(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["model"]: row for row in r["models"]}


def test_tokens_are_summed_per_model_and_priced_per_million() -> None:
    r = report(typed(TOKENS))
    llm, mlp = rows(r)["llm"], rows(r)["mlp"]
    # the negative usage and the answer without one are not counted
    assert llm["tokens"] == {"prompt": 1000, "completion": 200, "requests_with_usage": 3}
    assert llm["requests"] == 5  # every request still counts as one
    assert llm["cost_usd"] == 0.36  # 360 s at 3.6 USD/h
    assert llm["cost_per_million_tokens_usd"] == pytest.approx(0.36 / 1200 * 1e6)  # 300 USD
    # a model whose answers said no tokens has none, and no price per token
    assert (mlp["tokens"], mlp["cost_per_million_tokens_usd"]) == (None, None)
    assert (mlp["ttft_p50_s"], mlp["ttft_p99_s"]) == (None, None)
    # the total: the tokens summed, priced at the cost of the models that said them
    t = r["total"]
    assert t["tokens"] == llm["tokens"] and t["cost_usd"] == pytest.approx(0.36 + 0.01)
    assert t["cost_per_million_tokens_usd"] == llm["cost_per_million_tokens_usd"]


def test_time_to_first_token_percentiles() -> None:
    r = report(typed(TOKENS))
    llm = rows(r)["llm"]
    # 0.1, 0.2 and 0.4 s: the negative one is not counted, the unstreamed one has none
    assert (llm["ttft_p50_s"], llm["ttft_p99_s"]) == (0.2, 0.4)
    assert (r["total"]["ttft_p50_s"], r["total"]["ttft_p99_s"]) == (0.2, 0.4)
    # a hundred streams that said no usage: their TTFT is known, their tokens are not
    log = [
        on("llm", "replica_starting", 0, replica=1, gpu_type="L4"),
        on("llm", "replica_ready", 1, replica=1),
        *(ask("llm", 10 + i, 1, ttft_s=(i + 1) / 100) for i in range(100)),
        on("llm", "replica_stopped", 200, replica=1),
    ]
    r = report(typed(log))
    (llm,) = r["models"]
    assert llm["ttft_p50_s"] == pytest.approx(0.505) and llm["ttft_p99_s"] == 0.99
    assert llm["tokens"] is None and llm["cost_per_million_tokens_usd"] is None
    assert "| TTFT p50 |" in to_markdown(r)  # the columns show a TTFT even without tokens
    assert "| - | - | 505.0 ms |" in to_markdown(r)


def test_a_log_without_token_fields_has_no_token_figures_nor_columns() -> None:
    r = report(typed(LOG))
    (m,) = r["models"]
    for row in (m, r["total"]):
        assert row["tokens"] is None and row["cost_per_million_tokens_usd"] is None
        assert row["ttft_p50_s"] is None and row["ttft_p99_s"] is None
    md = to_markdown(r)
    header = [line for line in md.splitlines() if line.startswith("| model |")]
    assert header == [
        "| model | billed as | requests | cold starts | cold p50 / p99 added | busy / warm-idle / "
        "loading / pre-warmed unused replica-s | cost | per 1k req | always-on | saving |"
    ]
    assert "|---|---|---:|---:|---:|---|---:|---:|---:|---:|\n" in md
    assert "token" not in md.lower() and "TTFT" not in md


def test_a_malformed_token_field_is_not_counted(tmp_path: Path) -> None:
    # the codec: a token field that is not an integer (or a time not a number) makes the line
    # unreadable, as any read field of the wrong type does: the report skips it and says so
    request = ask("llm", 20, 1, prompt_tokens=100, completion_tokens=50, ttft_s=0.2)
    for bad in ({"prompt_tokens": "100"}, {"completion_tokens": 5.0}, {"prompt_tokens": True},
                {"ttft_s": "fast"}):  # fmt: skip
        assert from_record({**request, **bad}) is None, bad
    path = tmp_path / "events.jsonl"
    lines = [*TOKENS[:2], {**request, "prompt_tokens": "100"}, *TOKENS[2:]]
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    events, skipped = read_log(path)
    assert skipped == 1
    r = report(events, skipped=skipped)
    assert rows(r)["llm"]["tokens"] == rows(report(typed(TOKENS)))["llm"]["tokens"]
    assert "1 unreadable line(s) skipped" in r["notes"][0]
    # a negative count reads (the codec checks types, not signs): the report does not count it
    negative = from_record({**request, "prompt_tokens": -1, "ttft_s": -0.5})
    assert isinstance(negative, Request) and negative.prompt_tokens == -1
    log = [*TOKENS[:2], {**request, "prompt_tokens": -1, "ttft_s": -0.5}, TOKENS[-1]]
    (llm,) = report(typed(log))["models"]
    assert llm["tokens"] is None and llm["ttft_p50_s"] is None and llm["requests"] == 1


def test_the_markdown_and_the_page_show_the_token_columns() -> None:
    r = report(typed(TOKENS))
    md = to_markdown(r)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| model |"))
    assert header.endswith("| saving | tokens prompt / completion | per 1M tokens | TTFT p50 |")
    assert "|---:|---:|---:|---:|---:|---:|---:|" in md  # three more right-aligned columns
    llm = next(line for line in lines if line.startswith("| llm |"))
    assert llm.endswith("| 1,000 / 200 | $300.00 | 200.0 ms |")
    mlp = next(line for line in lines if line.startswith("| mlp |"))
    assert mlp.endswith("| - | - | - |")
    total = next(line for line in lines if line.startswith("| **total** |"))
    assert total.endswith("| 1,000 / 200 | $300.00 | 200.0 ms |")
    assert "- Tokens: prompt / completion, as the answers that said their usage gave them" in md

    page = to_html(r)
    head = re.findall(r"<th scope='col'>([^<]*)</th>", page)
    assert head[-3:] == ["tokens prompt / completion", "per 1M tokens", "TTFT p50"]
    body = re.search(r"<tbody>(.*?)</tbody>", page, re.S)
    assert body is not None
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>",
             body.group(1))]  # fmt: skip
    assert [row[-3:] for row in cells] == [["1,000 / 200", "$300.00", "200.0 ms"], ["-"] * 3]
    assert all(len(row) == len(head) for row in cells)
    foot = re.search(r"<tfoot><tr>(.*?)</tr></tfoot>", page)
    assert foot is not None
    total_cells = re.findall(r"<td[^>]*>([^<]*)</td>", foot.group(1))
    assert total_cells[-3:] == ["1,000 / 200", "$300.00", "200.0 ms (worst model)"]
    assert "Tokens: prompt / completion" in page
    # a page of models without tokens has no such columns
    assert "per 1M tokens" not in to_html(report(typed(LOG)))


def test_a_groups_members_have_their_tokens_and_the_group_their_sum() -> None:
    usage = {"minilm": {"prompt_tokens": 12, "completion_tokens": 0},
             "bert": {"prompt_tokens": 30, "completion_tokens": 8, "ttft_s": 0.05}}  # fmt: skip
    log = [{**e, **usage[e["model"]]} if e["event"] == "request" else e for e in GROUP]
    r = report(typed(log))
    shared, minilm, bert = r["models"]
    assert minilm["tokens"] == {"prompt": 12, "completion": 0, "requests_with_usage": 1}
    assert bert["tokens"] == {"prompt": 30, "completion": 8, "requests_with_usage": 1}
    assert (minilm["ttft_p50_s"], bert["ttft_p50_s"], bert["ttft_p99_s"]) == (None, 0.05, 0.05)
    # the group's row holds its members' requests, so their tokens, and its cost per million
    assert shared["tokens"] == {"prompt": 42, "completion": 8, "requests_with_usage": 2}
    # 70 s of an L4 at 0.71 USD/h over 50 tokens
    assert shared["cost_per_million_tokens_usd"] == pytest.approx(70 * 0.71 / 3600 / 50 * 1e6)
    assert shared["ttft_p50_s"] == 0.05
    # a member has no cost of its own, so no price per token
    assert (
        minilm["cost_per_million_tokens_usd"] is None
        and bert["cost_per_million_tokens_usd"] is None
    )
    assert r["total"]["tokens"] == shared["tokens"]  # counted once, in the group's row
    member = next(line for line in to_markdown(r).splitlines() if line.startswith("| bert "))
    assert member.endswith("| in the shared row | - | - | - | - | 30 / 8 | - | 50.0 ms |")
    # a group whose members' answers said no tokens: none anywhere
    assert all(row["tokens"] is None for row in report(typed(GROUP))["models"])
