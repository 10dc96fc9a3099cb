"""The cost report as Markdown (``ember cost-report --format md``), and the phrases the HTML page
shares with it: money, dates, the headline, a loss's reason, sleeping's figures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from analysis.cost_sleep import LEVELS, SLEPT


def usd(value: float) -> str:
    """Money for people: cents from $1 up, four decimals below (a demo costs fractions)."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}${value:,.2f}" if value >= 1 else f"{sign}${value:.4f}"


def date_range(start: float, end: float) -> str:
    """``2025-11-03 14:00:05 to 15:00:05 UTC`` (the second date only when it differs)."""
    a = datetime.fromtimestamp(start, UTC)
    b = datetime.fromtimestamp(end, UTC)
    last = b.strftime("%H:%M:%S" if a.date() == b.date() else "%Y-%m-%d %H:%M:%S")
    return f"{a:%Y-%m-%d %H:%M:%S} to {last} UTC"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def always_on(r: dict[str, Any]) -> str:
    """What the always-on baseline is: one replica per model, and per group where models share."""
    grouped = any(m["kind"] == "group" for m in r["models"])
    return "one always-on replica per model" + (" or group" if grouped else "")


def headline(r: dict[str, Any]) -> str:
    """One sentence: spent, always-on, saved or lost."""
    t = r["total"]
    spent = f"Spent {usd(t['cost_usd'])}; {always_on(r)}: {usd(t['always_on_cost_usd'])}"
    if t["saving_usd"] >= 0:
        pct = "" if t["saving_pct"] is None else f" ({t['saving_pct']:.0f}%)"
        return f"{spent}. Scale to zero saved {usd(t['saving_usd'])}{pct}."
    return f"{spent}. Scale to zero cost {usd(-t['saving_usd'])} more: a loss (see below)."


def loss_sentence(row: dict[str, Any]) -> str:
    return (
        f"{row['model']}: scale to zero cost {usd(-row['saving_usd'])} more than always-on "
        f"here, because of {row['loss_reason']}."
    )


def name(row: dict[str, Any]) -> str:
    """A row's first cell: ``shared (group)``, ``minilm (in shared)``, ``llm``."""
    if row["kind"] == "group":
        return f"{row['model']} (group)"
    if row["kind"] == "member":
        return f"{row['model']} (in {row['group']})"
    return str(row["model"])


def billed_as(row: dict[str, Any]) -> str:
    """``GPU L4``, ``CPU 2 cores``, ``CPU``; for a group's member, ``as its group``."""
    if row["kind"] == "member":
        return "as its group"
    if row["resource"] == "GPU":
        return f"GPU {row['gpu_type']}" if row["gpu_type"] else "GPU"
    return f"CPU {row['cpus']:g} cores" if row["cpus"] else "CPU"


def latency(row: dict[str, Any]) -> str:
    p50, p99 = row["cold_added_latency_p50_s"], row["cold_added_latency_p99_s"]
    return f"{p50:.2f} / {p99:.2f} s" if p50 is not None and p99 is not None else "-"


TOKENS = (
    "Tokens: prompt / completion, as the answers that said their usage gave them; per 1M tokens: "
    "the cost over prompt and completion tokens together (the total's: the cost of the models "
    "with tokens); TTFT p50: the median time from a request's hand-off to a replica to its "
    "streamed answer's first event (the total's: the worst model's)."
)


def generates(r: dict[str, Any]) -> bool:
    """Whether a model's requests said their tokens or a time to first token: only then does
    the table have the token columns."""
    return any(m["tokens"] is not None or m["ttft_p50_s"] is not None for m in r["models"])


def tokens(row: dict[str, Any]) -> str:
    """``1,200 / 340``: prompt / completion tokens (``-``: none said)."""
    t = row["tokens"]
    return "-" if t is None else f"{t['prompt']:,} / {t['completion']:,}"


def per_million(row: dict[str, Any]) -> str:
    """USD per million tokens (``-``: no tokens, or no cost of its own: a group's member)."""
    value = row["cost_per_million_tokens_usd"]
    return "-" if value is None else usd(value)


def ttft(row: dict[str, Any]) -> str:
    """``120.0 ms``: the median time to a streamed answer's first event (``-``: none)."""
    p50 = row["ttft_p50_s"]
    return "-" if p50 is None else f"{p50 * 1000:,.1f} ms"


def to_markdown(r: dict[str, Any]) -> str:
    generation = generates(r)
    lines = [
        f"# Ember cost report: {date_range(r['start_ts'], r['end_ts'])} ({duration(r['span_s'])})",
        "",
        headline(r),
        "",
        *[f"> **Warning:** {w}\n" for w in r["warnings"]],
        "| model | billed as | requests | cold starts | cold p50 / p99 added | busy / warm-idle / "
        "loading / pre-warmed unused replica-s | cost | per 1k req | always-on | saving |"
        + (" tokens prompt / completion | per 1M tokens | TTFT p50 |" if generation else ""),
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"
        + ("---:|---:|---:|" if generation else ""),
    ]
    total = {**r["total"], "model": "**total**", "kind": "total", "resource": ""}
    for m in [*r["models"], total]:
        first = f"| {m['model'] if m['kind'] == 'total' else name(m)} | "
        first += f"{'' if m['kind'] == 'total' else billed_as(m)} | {m['requests']} | "
        first += f"{m['cold_starts']} ({m['cold_start_rate']:.1%}) | {latency(m)} | "
        last = f" {tokens(m)} | {per_million(m)} | {ttft(m)} |" if generation else ""
        if m["kind"] == "member":  # its replica time and cost are its group's
            lines.append(first + f"in the {m['group']} row | - | - | - | - |" + last)
            continue
        g = m["replica_seconds"]
        unit = f" {m['resource']}-s" if m["resource"] else ""
        per_k = m["cost_per_1000_requests_usd"]
        saving = usd(m["saving_usd"]) + (" (loss)" if m["saving_usd"] < 0 else "")
        lines.append(
            first + f"{g['busy']:.0f} / {g['warm_idle']:.0f} / {g['loading']:.0f} / "
            f"{g['prewarmed_unused']:.0f}{unit} | {usd(m['cost_usd'])} | "
            f"{'-' if per_k is None else usd(per_k)} | {usd(m['always_on_cost_usd'])} | "
            f"{saving} |{last}"
        )
    lines += sleep_markdown(r)
    b = r["billing"]
    lines += ["", *[f"- {loss_sentence(m)}" for m in r["models"] if m["loss_reason"]]]
    lines += [f"- Billing: per {b['granularity_s']:g} s, at least {b['minimum_s']:g} s a replica."]
    if generation:
        lines += [f"- {TOKENS}"]
    if any(m["kind"] == "group" for m in r["models"]):
        lines += [
            "- A group's replicas serve all its members: they are billed once, in the group's "
            "row (with its members' requests), against one always-on replica for the group."
        ]
    lines += [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def sleep_headline(r: dict[str, Any]) -> str:
    """One sentence: device-seconds saved by sleeping, next to those saved by scaling to zero."""
    t = r["total"]["sleep"]
    worth = "" if t["saved_usd"] is None else f" (worth {usd(t['saved_usd'])})"
    if t["unpriced"] and t["saved_usd"] is not None:
        worth = f" (worth {usd(t['saved_usd'])}, not counting {', '.join(t['unpriced'])})"
    return (
        f"Sleeping saved {t['device_seconds_saved']:,.0f} device-s{worth}; scaling to zero saved "
        f"{t['device_seconds_saved_by_zero']:,.0f} replica-s (one replica always up per model "
        "or group that ran its own, less the time they ran)."
    )


def asleep(s: dict[str, Any]) -> str:
    """``120 / 600 s``: seconds asleep at host / disk."""
    return " / ".join(f"{s['seconds'][lv]:,.0f}" for lv in LEVELS) + " s"


def wakes(s: dict[str, Any]) -> str:
    """``2 / 1``: wakes from host / disk."""
    return " / ".join(f"{s['wakes'][lv]['count']:,}" for lv in LEVELS)


def wake_medians(s: dict[str, Any]) -> str:
    """``4 / 7 ms``: the median wake_s from host / disk (``-`` where none was measured)."""
    medians = [s["wakes"][lv]["wake_s_p50"] for lv in LEVELS]
    if all(m is None for m in medians):
        return "-"
    return " / ".join("-" if m is None else f"{m * 1000:,.1f}" for m in medians) + " ms"


def slept_usd(s: dict[str, Any]) -> str:
    return "no price" if s["saved_usd"] is None else usd(s["saved_usd"])


def sleep_markdown(r: dict[str, Any]) -> list[str]:
    """The sleeping section (nothing when no model slept)."""
    if r["total"]["sleep"] is None:
        return []
    lines = [
        "",
        "## Saved by sleeping",
        "",
        sleep_headline(r),
        "",
        "| model | group | asleep host / disk | device-s saved by sleeping | worth | "
        "wakes host / disk | median wake host / disk |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    total = {**r["total"]["sleep"], "groups": []}
    named = [(m["model"], m["sleep"]) for m in r["models"] if m["sleep"]]
    for model, s in [*named, ("**total**", total)]:
        lines.append(
            f"| {model} | {', '.join(s['groups'])} | {asleep(s)} | "
            f"{s['device_seconds_saved']:,.0f} | {slept_usd(s)} | {wakes(s)} | "
            f"{wake_medians(s)} |"
        )
    return [*lines, "", SLEPT]
