"""``ember cost-report``: what scale to zero cost and saved, from the activator's event log.

Per model and in total: requests, cold starts and the latency they added (their queue wait,
p50/p99), replica time split into busy (serving at least one request), warm-idle, loading
(start to ready) and pre-warmed-but-unused (replicas a warm window started that served
nothing), the cost of that time at the model's GPU price, the cost per 1,000 requests, what one
always-on replica would have cost over the same span, and the saving.

Prices: a model's ``price_per_hour`` (from its config, carried in its ``replica_starting``
events), else its ``gpu_type`` in :data:`PRICES` (on-demand USD/hour), overridable with
``--price TYPE=USD``; a model with neither costs 0 and the report says so. Billing: each replica's
time is rounded up to ``granularity_s`` with a ``minimum_s`` floor, as clouds bill instances.
"""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activator.errors import ConfigError
from activator.events import parse_events

# On-demand USD per GPU-hour (typical public cloud list prices, late 2025); override with --price.
PRICES = {"H100": 6.88, "A100-80GB": 3.43, "A100": 3.43, "L4": 0.71, "T4": 0.53}


@dataclass
class _Replica:
    id: int
    started: float
    ready: float | None = None
    stopped: float | None = None
    prewarmed: bool = False
    busy: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class _Model:
    name: str
    gpu_type: str | None = None
    price: float | None = None
    replicas: dict[int, _Replica] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    cold: list[float] = field(default_factory=list)  # queue wait of each cold request
    warm_until: float = 0.0
    arrivals: list[float] = field(default_factory=list)


def read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The events, and how many unreadable lines (a torn last line after a crash) were skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the event log {path}: {exc.strerror}") from None
    events, skipped = parse_events(text.splitlines())
    if not events:
        raise ConfigError(f"{path} holds no Ember events")
    return events, skipped


def report(
    events: list[dict[str, Any]],
    *,
    prices: dict[str, float] | None = None,
    granularity_s: float = 1.0,
    minimum_s: float = 60.0,
    skipped: int = 0,
) -> dict[str, Any]:
    table = {**PRICES, **(prices or {})}
    for gpu, price in table.items():
        if price < 0 or not math.isfinite(price):
            raise ConfigError(f"price for {gpu} must be a non-negative number, got {price}")
    if granularity_s <= 0 or minimum_s < 0:
        raise ConfigError("billing granularity must be > 0 and the minimum >= 0")
    events = sorted(events, key=lambda e: e["ts"])
    start, end = events[0]["ts"], events[-1]["ts"]
    models: dict[str, _Model] = {}
    for e in events:
        m = models.setdefault(e["model"], _Model(e["model"]))
        kind = e["event"]
        if kind == "replica_starting":
            m.gpu_type = e.get("gpu_type") or m.gpu_type
            if e.get("price_per_hour") is not None:
                m.price = float(e["price_per_hour"])
            m.replicas[e["replica"]] = _Replica(
                e["replica"], e["ts"], prewarmed=m.warm_until > e["ts"]
            )
        elif kind == "replica_ready" and e.get("replica") in m.replicas:
            m.replicas[e["replica"]].ready = e["ts"]
        elif kind in ("replica_stopped", "replica_failed") and e.get("replica") in m.replicas:
            m.replicas[e["replica"]].stopped = e["ts"]
        elif kind == "prewarm":
            m.warm_until = max(m.warm_until, float(e.get("until") or e["ts"]))
        elif kind == "request":
            m.requests += 1
            m.arrivals.append(float(e.get("arrival") or e["ts"]))
            if int(e.get("status", 0)) >= 500:
                m.errors += 1
            if e.get("cold"):
                m.cold.append(float(e.get("queue_s") or 0.0))
            replica = m.replicas.get(e.get("replica"))  # type: ignore[arg-type]
            if replica is not None and e.get("start") is not None:
                replica.busy.append((float(e["start"]), float(e["end"])))
    rows = [_model_row(m, table, start, end, granularity_s, minimum_s) for m in models.values()]
    total = _total(rows)
    notes = []
    unpriced = [r["model"] for r in rows if r["price_per_hour"] is None]
    if unpriced:
        notes.append(f"no GPU price for {', '.join(unpriced)}: costed at 0 (set price_per_hour)")
    if skipped:
        notes.append(f"{skipped} unreadable line(s) skipped (a torn last line after a crash?)")
    return {
        "span_s": end - start,
        "billing": {"granularity_s": granularity_s, "minimum_s": minimum_s},
        "total": total,
        "models": rows,
        "notes": notes,
        "timeline": {m.name: _timeline(m, start, end) for m in models.values()},
    }


def _union(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Seconds covered by ``intervals`` clipped to ``[lo, hi]``."""
    total, cursor = 0.0, lo
    for a, b in sorted(intervals):
        a, b = max(a, cursor), min(b, hi)
        if b > a:
            total += b - a
            cursor = b
    return total


def _model_row(
    m: _Model,
    table: dict[str, float],
    start: float,
    end: float,
    granularity_s: float,
    minimum_s: float,
) -> dict[str, Any]:
    price = m.price if m.price is not None else table.get(m.gpu_type or "")
    busy = idle = loading = unused = billed = 0.0
    for r in m.replicas.values():
        stopped = r.stopped if r.stopped is not None else end
        ready = r.ready if r.ready is not None else stopped
        loading += ready - r.started
        up = max(0.0, stopped - ready)
        served = _union(r.busy, ready, stopped)
        if r.prewarmed and not r.busy:
            unused += up
        else:
            busy += served
            idle += up - served
        life = stopped - r.started
        billed += max(minimum_s, math.ceil(life / granularity_s - 1e-9) * granularity_s)
    rate = (price or 0.0) / 3600
    cost = billed * rate
    always_on = (end - start) * rate
    cold = sorted(m.cold)
    return {
        "model": m.name,
        "gpu_type": m.gpu_type,
        "price_per_hour": price,
        "requests": m.requests,
        "errors": m.errors,
        "cold_starts": len(cold),
        "cold_start_rate": len(cold) / m.requests if m.requests else 0.0,
        "cold_added_latency_p50_s": statistics.median(cold) if cold else None,
        "cold_added_latency_p99_s": cold[min(len(cold) - 1, math.ceil(0.99 * len(cold)) - 1)]
        if cold
        else None,
        "replica_starts": len(m.replicas),
        "gpu_seconds": {
            "busy": busy,
            "warm_idle": idle,
            "loading": loading,
            "prewarmed_unused": unused,
            "billed": billed,
        },
        "cost_usd": round(cost, 6),
        "cost_per_1000_requests_usd": round(cost / m.requests * 1000, 6) if m.requests else None,
        "always_on_cost_usd": round(always_on, 6),
        "saving_usd": round(always_on - cost, 6),
    }


def _total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(r["requests"] for r in rows)
    cost = sum(r["cost_usd"] for r in rows)
    always_on = sum(r["always_on_cost_usd"] for r in rows)
    gpu = {k: sum(r["gpu_seconds"][k] for r in rows) for k in rows[0]["gpu_seconds"]}
    cold = sum(r["cold_starts"] for r in rows)
    return {
        "requests": requests,
        "cold_starts": cold,
        "cold_start_rate": cold / requests if requests else 0.0,
        "gpu_seconds": gpu,
        "cost_usd": round(cost, 6),
        "cost_per_1000_requests_usd": round(cost / requests * 1000, 6) if requests else None,
        "always_on_cost_usd": round(always_on, 6),
        "saving_usd": round(always_on - cost, 6),
    }


def _timeline(m: _Model, start: float, end: float, buckets: int = 60) -> dict[str, list[float]]:
    """Replicas up and requests per second, in ``buckets`` steps over the log's span."""
    width = max((end - start) / buckets, 1e-9)
    replicas, rate = [], []
    for i in range(buckets):
        lo, hi = start + i * width, start + (i + 1) * width
        up = sum(
            1
            for r in m.replicas.values()
            if r.started < hi and (r.stopped if r.stopped is not None else end) > lo
        )
        replicas.append(float(up))
        rate.append(sum(1 for a in m.arrivals if lo <= a < hi) / width)
    return {"replicas": replicas, "requests_per_s": rate}


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Ember cost report ({r['span_s'] / 3600:.2f} h of events)",
        "",
        "| model | GPU | requests | cold starts | cold p50 / p99 added | busy / warm-idle / "
        "loading / pre-warmed unused GPU-s | cost | per 1k req | always-on | saving |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for m in [*r["models"], {**r["total"], "model": "**total**", "gpu_type": ""}]:
        g = m["gpu_seconds"]
        p50, p99 = m.get("cold_added_latency_p50_s"), m.get("cold_added_latency_p99_s")
        added = f"{p50:.2f} / {p99:.2f} s" if p50 is not None and p99 is not None else "-"
        per_k = m["cost_per_1000_requests_usd"]
        lines.append(
            f"| {m['model']} | {m.get('gpu_type') or '-'} | {m['requests']} | "
            f"{m['cold_starts']} ({m['cold_start_rate']:.1%}) | {added} | "
            f"{g['busy']:.0f} / {g['warm_idle']:.0f} / {g['loading']:.0f} / "
            f"{g['prewarmed_unused']:.0f} | ${m['cost_usd']:.4f} | "
            f"{'-' if per_k is None else f'${per_k:.4f}'} | ${m['always_on_cost_usd']:.4f} | "
            f"${m['saving_usd']:.4f} |"
        )
    b = r["billing"]
    lines += [
        "",
        f"Billing: per {b['granularity_s']:g} s, at least {b['minimum_s']:g} s a replica.",
    ]
    lines += [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def to_html(r: dict[str, Any]) -> str:
    """The markdown's figures as an HTML table, with inline SVG plots (no scripts, no CDN)."""
    rows = []
    for m in r["models"]:
        g = m["gpu_seconds"]
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    m["model"],
                    m.get("gpu_type") or "-",
                    m["requests"],
                    m["cold_starts"],
                    f"{g['busy']:.0f}/{g['warm_idle']:.0f}/{g['loading']:.0f}/"
                    f"{g['prewarmed_unused']:.0f}",
                    f"${m['cost_usd']:.4f}",
                    f"${m['always_on_cost_usd']:.4f}",
                    f"${m['saving_usd']:.4f}",
                )
            )
            + "</tr>"
        )
    plots = []
    for name, t in r["timeline"].items():
        plots.append(f"<h3>{html.escape(name)}</h3>")
        plots.append(_svg_line(t["replicas"], "replicas", "#c0392b"))
        plots.append(_svg_line(t["requests_per_s"], "requests/s", "#2c3e50"))
    total = r["total"]
    g = total["gpu_seconds"]
    breakdown = {
        "busy": g["busy"],
        "warm-idle": g["warm_idle"],
        "loading": g["loading"],
        "pre-warmed unused": g["prewarmed_unused"],
    }
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Ember cost report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;"
        "border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>Ember cost report</h1><p>{r['span_s'] / 3600:.2f} h of events; total cost "
        f"${total['cost_usd']:.4f}, always-on ${total['always_on_cost_usd']:.4f}, saving "
        f"${total['saving_usd']:.4f}.</p><table><tr><th>model</th><th>GPU</th><th>requests</th>"
        "<th>cold starts</th><th>GPU-s busy/idle/loading/unused</th><th>cost</th>"
        f"<th>always-on</th><th>saving</th></tr>{''.join(rows)}</table>"
        f"<h2>Where the GPU-seconds went</h2>{_svg_bars(breakdown)}"
        f"<h2>Replicas and request rate over time</h2>{''.join(plots)}"
        + "".join(f"<p>{html.escape(n)}</p>" for n in r["notes"])
        + "</body></html>\n"
    )


def _svg_line(values: list[float], label: str, color: str, w: int = 600, h: int = 80) -> str:
    top = max(values) or 1.0
    step = w / max(1, len(values) - 1)
    points = " ".join(f"{i * step:.1f},{h - v / top * (h - 10):.1f}" for i, v in enumerate(values))
    return (
        f"<svg width='{w}' height='{h + 20}' role='img' aria-label='{label}'>"
        f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{points}'/>"
        f"<text x='0' y='{h + 16}' font-size='12'>{label} (max {top:g})</text></svg>"
    )


def _svg_bars(values: dict[str, float], w: int = 600) -> str:
    top = max(values.values()) or 1.0
    bars = []
    for i, (name, v) in enumerate(values.items()):
        y = i * 24
        width = v / top * (w - 200)
        bars.append(
            f"<rect x='160' y='{y}' width='{width:.1f}' height='18' fill='#2980b9'/>"
            f"<text x='0' y='{y + 14}' font-size='12'>{html.escape(name)}</text>"
            f"<text x='{165 + width:.1f}' y='{y + 14}' font-size='12'>{v:.0f} s</text>"
        )
    return f"<svg width='{w}' height='{len(values) * 24}'>{''.join(bars)}</svg>"
