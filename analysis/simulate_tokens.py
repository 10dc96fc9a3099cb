"""``ember simulate``'s figures weighted by tokens, for the requests whose events carry them.

A request is not a unit of LLM traffic: a cold start in front of a 2,000-token answer is one
cold start, but cost is per token. Per model (and summed in the total), over the requests that
said their tokens (``tokens``, in the cost report's shape: ``prompt``, ``completion``,
``requests_with_usage``):

- ``cold_start_tokens``: the prompt and completion tokens of the requests that met a cold start
  (the first request of an arrival that found the model not loaded; tiered: waiting for the
  wake from zero), and ``cold_start_token_rate``, their share of the tokens: the token-weighted
  ``cold_start_rate``;
- ``added_latency_s_per_1k_tokens``: the model's ``added_latency_s`` (what cold starts, tiered:
  all wakes, added to its requests) per 1,000 of its tokens;
- ``cost_per_million_tokens_usd``: the model's simulated ``cost_usd`` (loaded plus loading) per
  million of its tokens, prompt and completion together: the cost report's figure
  (:func:`analysis.cost.per_million`) under the simulated policy.

The last two divide the whole model's figure by the tokens said, as the cost report does.

A model whose requests say no tokens has these None, never zeros; the total sums the models that
have them (None when none does), and ``p75_app_cold_start_token_rate`` is the 75th percentile
over those models of their token rate, as ``p75_app_cold_start_rate`` is of the request rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from analysis.cost import per_million
from analysis.simulate_trace import Arrival

ROW_FIELDS = (
    "tokens",
    "cold_start_tokens",
    "cold_start_token_rate",
    "added_latency_s_per_1k_tokens",
    "cost_per_million_tokens_usd",
)
TOTAL_FIELDS = (*ROW_FIELDS, "p75_app_cold_start_token_rate")


def p75(rates: Iterable[float]) -> float | None:
    """The 75th percentile (nearest rank) of per-model rates; None: no model."""
    ordered = sorted(rates)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, math.ceil(0.75 * len(ordered)) - 1)]


def token_row(
    served: Iterable[tuple[Arrival, bool]], *, cost_usd: float, added_latency_s: float
) -> dict[str, Any]:
    """A model's token figures from each arrival and whether it met a cold start, and the
    model's simulated cost and added latency (over its tokens, as the cost is)."""
    said = [(a.tokens, cold) for a, cold in served if a.tokens is not None]
    if not said:
        return dict.fromkeys(ROW_FIELDS)
    tokens = {
        "prompt": sum(t[0] for t, _ in said),
        "completion": sum(t[1] for t, _ in said),
        "requests_with_usage": len(said),
    }
    cold = sum(t[0] + t[1] for t, was_cold in said if was_cold)
    return {"tokens": tokens, **_weighted(tokens, cold, added_latency_s, cost_usd)}


def token_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The token figures over the models that have them (all None when none has)."""
    used = [r for r in rows if r["tokens"] is not None]
    if not used:
        return dict.fromkeys(TOTAL_FIELDS)
    tokens = {k: sum(r["tokens"][k] for r in used) for k in ("prompt", "completion")}
    tokens["requests_with_usage"] = sum(r["tokens"]["requests_with_usage"] for r in used)
    cold = sum(r["cold_start_tokens"] for r in used)
    latency = sum(r["added_latency_s"] for r in used)
    return {
        "tokens": tokens,
        **_weighted(tokens, cold, latency, sum(r["cost_usd"] for r in used)),
        "p75_app_cold_start_token_rate": p75(
            r["cold_start_token_rate"] for r in used if r["cold_start_token_rate"] is not None
        ),
    }


def _weighted(
    tokens: dict[str, int], cold: int, added_latency_s: float, cost_usd: float
) -> dict[str, Any]:
    """The figures per token, None where there are no tokens to weigh by (all said 0)."""
    count = tokens["prompt"] + tokens["completion"]
    return {
        "cold_start_tokens": cold,
        "cold_start_token_rate": cold / count if count else None,
        "added_latency_s_per_1k_tokens": added_latency_s / count * 1000 if count else None,
        "cost_per_million_tokens_usd": per_million(cost_usd, tokens),
    }
