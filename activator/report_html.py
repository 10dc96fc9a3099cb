"""``ember cost-report --format html``: one self-contained page a manager can read offline.

A headline (the date range, what was spent, what one always-on replica per model would have
cost, what scale to zero saved or, labelled as such, lost and why), a visible warning for each
model without a price, the per-model table with a totals row, and charts drawn by
:mod:`activator.report_charts` (matplotlib, the ``report`` extra: ``pip install 'ember[report]'``).
No scripts, no external files: the page opens offline and prints.
"""

from __future__ import annotations

from html import escape
from typing import Any

from activator.cost import (
    billed_as,
    date_range,
    duration,
    latency,
    loss_sentence,
    usd,
)
from activator.errors import ConfigError

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
        from activator import report_charts as charts
    except ImportError as exc:
        if not (exc.name or "").startswith("matplotlib"):
            raise
        raise ConfigError(MISSING) from None
    t = r["total"]
    models = r["models"]
    timelines = "".join(
        f"<figure>{charts.timeline(m['model'], r['timeline'][m['model']], resource=m['resource'])}"
        "</figure>"
        for m in models
    )
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Ember cost report, {escape(date_range(r['start_ts'], r['end_ts']))}</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>Ember cost report</h1>"
        f"<p class='range'>{escape(date_range(r['start_ts'], r['end_ts']))} "
        f"({escape(duration(r['span_s']))} of events)</p>"
        f"{_cards(t)}"
        + "".join(
            f"<p class='warning' role='alert'><strong>Warning:</strong> {escape(w)}</p>"
            for w in r["warnings"]
        )
        + "".join(
            f"<p class='loss'><strong>Loss:</strong> {escape(loss_sentence(m))}</p>"
            for m in models
            if m["loss_reason"]
        )
        + f"<h2>Per model</h2>{_table(models, t)}"
        "<h2>Cost: scale to zero against always-on</h2>"
        f"<figure>{charts.costs(models)}</figure>"
        "<h2>Where the replica time went</h2>"
        f"<figure>{charts.breakdown(models)}</figure>"
        f"<h2>Replicas and request rate over time</h2>{timelines}"
        f"{_footer(r)}</body></html>\n"
    )


def _cards(t: dict[str, Any]) -> str:
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
        ("", "Always-on would have cost", usd(t["always_on_cost_usd"]), "one replica per model"),
        (*third, share),
    ]
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


def _cells(m: dict[str, Any], *, total: bool) -> list[tuple[str, str]]:
    """(text, css class) per column."""
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
        ("total" if total else m["model"], ""),
        ("" if total else billed_as(m), ""),
        (price, "loss" if price == "no price" else ""),
        (f"{m['requests']:,}", ""),
        (f"{m['cold_starts']:,} ({m['cold_start_rate']:.1%})", ""),
        (latency(m) + (" (worst model)" if total and m["cold_starts"] else ""), ""),
        (
            f"{g['busy']:,.0f} / {g['warm_idle']:,.0f} / {g['loading']:,.0f} / "
            f"{g['prewarmed_unused']:,.0f} {unit}",
            "",
        ),
        (usd(m["cost_usd"]), ""),
        ("-" if per_k is None else usd(per_k), ""),
        (usd(m["always_on_cost_usd"]), ""),
        (saved, "loss" if m["saving_usd"] < 0 else ""),
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


def _table(models: list[dict[str, Any]], total: dict[str, Any]) -> str:
    head = "".join(f"<th scope='col'>{escape(h)}</th>" for h in _HEAD)
    body = "".join(_row(_cells(m, total=False)) for m in models)
    return (
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
        f"<tfoot>{_row(_cells(total, total=True))}</tfoot></table>"
    )


_SOURCES = {
    "--price": "--price MODEL=USD on the command line",
    "config": "price_per_hour in its model config",
    "gpu_type": "its GPU type's on-demand price",
    "cpu": "--price cpu=USD per core-hour times its cores",
}


def _footer(r: dict[str, Any]) -> str:
    b = r["billing"]
    lines = [
        f"Billing: each replica per {b['granularity_s']:g} s, at least {b['minimum_s']:g} s a "
        "replica start. Always-on: one replica per model for the whole span, at the same price.",
        "Cold-start latency: the time a request that found no ready replica waited for one.",
        *(
            f"{m['model']}'s price: {_SOURCES[m['price_source']]}."
            for m in r["models"]
            if m["price_source"]
        ),
        *r["notes"],
    ]
    return (
        "<h2>Notes</h2><ul class='small'>"
        + "".join(f"<li>{escape(n)}</li>" for n in lines)
        + "</ul>"
    )
