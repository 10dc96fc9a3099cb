"""``ember cost-report --format html``: one self-contained page a manager can read offline.

A headline (the date range, what was spent, what one always-on replica per model would have
cost, what scale to zero saved or, labelled as such, lost and why), a visible warning for each
model without a price, the per-model table with a totals row (a group's row, its replicas' time
and cost, followed by its members' rows, their requests; where answers said their tokens, the
tokens, the cost per million and the time to first token), where models slept on shared
replicas what sleeping saved (with its definition), and charts drawn by
:mod:`analysis.charts` (matplotlib, the ``report`` extra: ``pip install 'ember[report]'``).
No scripts, no external files: the page opens offline and prints.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from activator.errors import ConfigError
from analysis.cost_markdown import (
    TOKENS,
    always_on,
    asleep,
    billed_as,
    date_range,
    duration,
    generates,
    latency,
    loss_sentence,
    name,
    per_million,
    sleep_headline,
    slept_usd,
    tokens,
    ttft,
    usd,
    wake_medians,
    wakes,
)
from analysis.cost_sleep import SLEPT

MISSING = (
    "the HTML report draws its charts with matplotlib, which is not installed: "
    "pip install 'ember[report]' (or use --format md or json)"
)

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} .range{color:#555;margin-top:0}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:12em}
.card b{display:block;font-size:1.6em} .card.saved b{color:#1e8449} .card.loss b{color:#c0392b}
.warning{background:#fdecea;border-left:5px solid #c0392b;padding:.6em 1em;margin:.5em 0}
.loss{color:#c0392b}
table{border-collapse:collapse;width:100%;font-size:.92em}
td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right;vertical-align:top}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}
tfoot td{font-weight:bold;border-top:2px solid #444}
figure{margin:1.5em 0} figure svg{width:100%;height:auto}
.small{color:#555;font-size:.9em}
"""


def to_html(r: dict[str, Any]) -> str:
    """The report as one HTML page (ConfigError naming the extra when matplotlib is missing)."""
    try:
        from analysis import charts
    except ImportError as exc:
        if not (exc.name or "").startswith("matplotlib"):
            raise
        raise ConfigError(MISSING) from None
    t = r["total"]
    models = r["models"]
    billed = [m for m in models if m["kind"] != "member"]  # a member's replicas are its group's
    timelines = "".join(
        f"<figure>{charts.timeline(m['model'], r['timeline'][m['model']], resource=m['resource'])}"
        "</figure>"
        for m in billed
    )
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Ember cost report, {escape(date_range(r['start_ts'], r['end_ts']))}</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>Ember cost report</h1>"
        f"<p class='range'>{escape(date_range(r['start_ts'], r['end_ts']))} "
        f"({escape(duration(r['span_s']))} of events)</p>"
        f"{_cards(t, always_on(r))}"
        + "".join(
            f"<p class='warning' role='alert'><strong>Warning:</strong> {escape(w)}</p>"
            for w in r["warnings"]
        )
        + "".join(
            f"<p class='loss'><strong>Loss:</strong> {escape(loss_sentence(m))}</p>"
            for m in models
            if m["loss_reason"]
        )
        + f"<h2>Per model</h2>{_table(models, t, generation=generates(r))}"
        + _sleeping(r, charts.sleeping)
        + "<h2>Cost: scale to zero against always-on</h2>"
        f"<figure>{charts.costs(billed)}</figure>"
        "<h2>Where the replica time went</h2>"
        f"<figure>{charts.breakdown(billed)}</figure>"
        f"<h2>Replicas and request rate over time</h2>{timelines}"
        f"{_footer(r)}</body></html>\n"
    )


def _cards(t: dict[str, Any], baseline: str) -> str:
    saved = t["saving_usd"] >= 0
    pct = t["saving_pct"]
    if saved:
        third = ("saved", "Saved by scaling to zero", usd(t["saving_usd"]))
        share = "" if pct is None else f"{pct:.0f}% of always-on"
    else:
        third = ("loss", "Lost by scaling to zero", usd(-t["saving_usd"]))
        share = "" if pct is None else f"{-pct:.0f}% more than always-on"
    cards = [
        ("", "Spent", usd(t["cost_usd"]), f"{t['requests']:,} requests"),
        ("", "Always-on would have cost", usd(t["always_on_cost_usd"]), baseline),
        (*third, share),
    ]
    if t["sleep"] is not None:
        s = t["sleep"]
        worth = "" if s["saved_usd"] is None else f"worth {usd(s['saved_usd'])}"
        if worth and s["unpriced"]:
            worth += f", not counting {len(s['unpriced'])} unpriced"
        cards.append(
            ("saved", "Saved by sleeping", f"{s['device_seconds_saved']:,.0f} device-s", worth)
        )
    return (
        "<div class='cards'>"
        + "".join(
            f"<div class='card {cls}'>{escape(title)}<b>{escape(value)}</b>"
            f"<span class='small'>{escape(sub)}</span></div>"
            for cls, title, value, sub in cards
        )
        + "</div>"
    )


_HEAD = (
    "model",
    "billed as",
    "price / replica-hour",
    "requests",
    "cold starts",
    "cold-start latency p50 / p99",
    "busy / warm-idle / loading / pre-warmed unused",
    "cost",
    "per 1,000 requests",
    "always-on",
    "saved",
)
_TOKENS_HEAD = ("tokens prompt / completion", "per 1M tokens", "TTFT p50")


def _cells(m: dict[str, Any], *, total: bool, generation: bool) -> list[tuple[str, str]]:
    """(text, css class) per column; ``generation``: with the token columns."""
    last = [(tokens(m), ""), (per_million(m), ""), (ttft(m), "")] if generation else []
    if total and generation and m["ttft_p50_s"] is not None:
        last[-1] = (ttft(m) + " (worst model)", "")
    first = [
        ("total" if total else name(m), ""),
        ("" if total else billed_as(m), ""),
    ]
    counts = [
        (f"{m['requests']:,}", ""),
        (f"{m['cold_starts']:,} ({m['cold_start_rate']:.1%})", ""),
        (latency(m) + (" (worst model)" if total and m["cold_starts"] else ""), ""),
    ]
    if not total and m["kind"] == "member":  # its replica time and cost are its group's
        dashes = [("-", "")] * 4
        return [*first, ("-", ""), *counts, (f"in the {m['group']} row", ""), *dashes, *last]
    g = m["replica_seconds"]
    unit = "replica-s" if total else f"{m['resource']}-s"
    if total:
        price = ""
    elif m["price_per_hour"] is None:
        price = "no price"
    else:
        price = usd(m["price_per_hour"])
    per_k = m["cost_per_1000_requests_usd"]
    saved = usd(m["saving_usd"]) if m["saving_usd"] >= 0 else f"{usd(m['saving_usd'])} (loss)"
    return [
        *first,
        (price, "loss" if price == "no price" else ""),
        *counts,
        (
            f"{g['busy']:,.0f} / {g['warm_idle']:,.0f} / {g['loading']:,.0f} / "
            f"{g['prewarmed_unused']:,.0f} {unit}",
            "",
        ),
        (usd(m["cost_usd"]), ""),
        ("-" if per_k is None else usd(per_k), ""),
        (usd(m["always_on_cost_usd"]), ""),
        (saved, "loss" if m["saving_usd"] < 0 else ""),
        *last,
    ]


def _row(cells: list[tuple[str, str]]) -> str:
    return (
        "<tr>"
        + "".join(
            f"<td class='{cls}'>{escape(text)}</td>" if cls else f"<td>{escape(text)}</td>"
            for text, cls in cells
        )
        + "</tr>"
    )


def _table(models: list[dict[str, Any]], total: dict[str, Any], *, generation: bool) -> str:
    """The per-model table; ``generation``: with the token columns (some answers said tokens)."""
    columns = (*_HEAD, *_TOKENS_HEAD) if generation else _HEAD
    head = "".join(f"<th scope='col'>{escape(h)}</th>" for h in columns)
    body = "".join(_row(_cells(m, total=False, generation=generation)) for m in models)
    foot = _row(_cells(total, total=True, generation=generation))
    return (
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody><tfoot>{foot}</tfoot></table>"
    )


_SLEEP_HEAD = (
    "model",
    "group",
    "asleep host / disk",
    "device-s saved by sleeping",
    "worth",
    "wakes host / disk",
    "median wake host / disk",
)


def _sleep_cells(name: str, s: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (name, ""),
        (", ".join(s.get("groups", [])), ""),
        (asleep(s), ""),
        (f"{s['device_seconds_saved']:,.0f}", ""),
        (slept_usd(s), "loss" if s["saved_usd"] is None else ""),
        (wakes(s), ""),
        (wake_medians(s), ""),
    ]


def _sleeping(r: dict[str, Any], chart: Callable[[list[dict[str, Any]]], str]) -> str:
    """What sleeping on shared replicas saved (nothing when no model slept)."""
    total = r["total"]["sleep"]
    if total is None:
        return ""
    slept = [m for m in r["models"] if m["sleep"]]
    head = "".join(f"<th scope='col'>{escape(h)}</th>" for h in _SLEEP_HEAD)
    body = "".join(_row(_sleep_cells(m["model"], m["sleep"])) for m in slept)
    return (
        f"<h2>Saved by sleeping</h2><p>{escape(sleep_headline(r))}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
        f"<tfoot>{_row(_sleep_cells('total', total))}</tfoot></table>"
        f"<p class='small'>{escape(SLEPT)}</p><figure>{chart(slept)}</figure>"
    )


_SOURCES = {
    "--price": "--price MODEL=USD on the command line",
    "config": "price_per_hour in its model config",
    "gpu_type": "its GPU type's on-demand price",
    "cpu": "--price cpu=USD per core-hour times its cores",
    "members": "the highest --price MODEL=USD of its members",
}


def _priced(m: dict[str, Any]) -> str:
    """Where a row's price came from (a member's prices only its sleeps)."""
    if m["kind"] == "member":
        return f"{m['model']}'s price for its sleeps: {_SOURCES[m['price_source']]}."
    source = _SOURCES[m["price_source"]]
    if m["kind"] == "group" and m["price_source"] == "config":
        source = "the highest price_per_hour in its members' model configs"
    return f"{m['model']}'s price: {source}."


def _footer(r: dict[str, Any]) -> str:
    b = r["billing"]
    lines = [
        f"Billing: each replica per {b['granularity_s']:g} s, at least {b['minimum_s']:g} s a "
        "replica start. Always-on: one replica per model for the whole span (one per group for "
        "models sharing a group's replicas), at the same price.",
        "Cold-start latency: the time a request that found no ready replica waited for one.",
        *([TOKENS] if generates(r) else []),
        *(_priced(m) for m in r["models"] if m["price_source"]),
        *r["notes"],
    ]
    return (
        "<h2>Notes</h2><ul class='small'>"
        + "".join(f"<li>{escape(n)}</li>" for n in lines)
        + "</ul>"
    )
