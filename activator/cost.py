"""``ember cost-report``: what scale to zero cost and saved, from the activator's event log.

Per model and in total: requests, cold starts and the latency they added (their queue wait,
p50/p99), replica time split into busy (serving at least one request), warm-idle, loading
(start to ready) and pre-warmed-but-unused (replicas a warm window started that served
nothing), the cost of that time, the cost per 1,000 requests, what one always-on replica would
have cost over the same span, and the saving (a loss when scale to zero cost more, with why).

A model is billed as a GPU when its events name a ``gpu_type`` (or a ``cuda`` device), else as a
CPU. Its price per replica-hour, first found of: ``--price MODEL=USD`` (per replica-hour); its
config's ``price_per_hour`` (carried in its ``replica_starting`` events); for a GPU model its
``gpu_type`` in :data:`PRICES`, overridable with ``--price TYPE=USD``; for a CPU model
``--price cpu=USD`` per core-hour times its cores (``cpus`` in its events, else 1, said in a
note). A model with none costs 0 and the report warns. Billing: each replica's time is rounded up
to ``granularity_s`` with a ``minimum_s`` floor, as clouds bill instances.

The HTML page is :mod:`activator.report_html` (it needs the ``report`` extra).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from activator.errors import ConfigError
from activator.events import parse_events

# On-demand USD per GPU-hour (typical public cloud list prices, late 2025); override with --price.
PRICES = {"H100": 6.88, "A100-80GB": 3.43, "A100": 3.43, "L4": 0.71, "T4": 0.53}
# the --price key of the per-core-hour price of CPU models
CPU = "cpu"
PHASES = ("busy", "warm_idle", "loading", "prewarmed_unused")


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
    device: str | None = None
    cpus: float | None = None
    price: float | None = None
    replicas: dict[int, _Replica] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    cold: list[float] = field(default_factory=list)  # queue wait of each cold request
    warm_until: float = 0.0
    arrivals: list[float] = field(default_factory=list)

    @property
    def resource(self) -> str:
        gpu = self.gpu_type or (self.device or "").startswith("cuda")
        return "GPU" if gpu else "CPU"


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
    """The report as a JSON-able dict; ``prices`` maps GPU types, ``cpu`` and model names."""
    table = {**PRICES, **(prices or {})}
    for key, price in table.items():
        if price < 0 or not math.isfinite(price):
            raise ConfigError(f"price for {key} must be a non-negative number, got {price}")
    if granularity_s <= 0 or minimum_s < 0:
        raise ConfigError("billing granularity must be > 0 and the minimum >= 0")
    events = sorted(events, key=lambda e: e["ts"])
    start, end = events[0]["ts"], events[-1]["ts"]
    models = _replay(events)
    billing = {"granularity_s": granularity_s, "minimum_s": minimum_s}
    rows = [_model_row(m, table, start, end, billing) for m in models.values()]
    warnings = [_unpriced(r) for r in rows if r["price_per_hour"] is None]
    notes = [
        f"{r['model']} is priced as 1 core: its events carry no CPU count (cpus)"
        for r in rows
        if r["price_source"] == "cpu" and r["cpus"] is None
    ]
    if skipped:
        notes.append(f"{skipped} unreadable line(s) skipped (a torn last line after a crash?)")
    return {
        "start_ts": start,
        "end_ts": end,
        "span_s": end - start,
        "billing": billing,
        "total": _total(rows),
        "models": rows,
        "warnings": warnings,
        "notes": notes,
        "timeline": {m.name: _timeline(m, start, end) for m in models.values()},
    }


def _unpriced(row: dict[str, Any]) -> str:
    """The warning for a model without a price, naming what would price it."""
    if row["resource"] == "GPU":
        flag = f"--price {row['gpu_type'] or row['model']}=USD_PER_HOUR"
    else:
        flag = f"--price {row['model']}=USD_PER_HOUR, or --price cpu=USD_PER_CORE_HOUR"
    return (
        f"no price for {row['model']}: its cost shows as $0 "
        f"(set price_per_hour in its model config, or {flag})"
    )


def _replay(events: list[dict[str, Any]]) -> dict[str, _Model]:
    models: dict[str, _Model] = {}
    for e in events:
        m = models.setdefault(e["model"], _Model(e["model"]))
        kind = e["event"]
        if kind == "replica_starting":
            m.gpu_type = e.get("gpu_type") or m.gpu_type
            m.device = e.get("device") or m.device
            if e.get("price_per_hour") is not None:
                m.price = float(e["price_per_hour"])
            if e.get("cpus") is not None:
                m.cpus = float(e["cpus"])
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
    return models


def _price(m: _Model, table: dict[str, float]) -> tuple[float | None, str | None]:
    """A model's USD per replica-hour and where it came from (None, None: unpriced)."""
    if m.name in table:
        return table[m.name], "--price"
    if m.price is not None:
        return m.price, "config"
    if m.resource == "GPU":
        if m.gpu_type in table:
            return table[m.gpu_type], "gpu_type"
        return None, None
    if CPU in table:
        return table[CPU] * (m.cpus or 1.0), "cpu"
    return None, None


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
    m: _Model, table: dict[str, float], start: float, end: float, billing: dict[str, float]
) -> dict[str, Any]:
    price, source = _price(m, table)
    step, minimum = billing["granularity_s"], billing["minimum_s"]
    busy = idle = loading = unused = billed = rounded = lived = 0.0
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
        lived += life
        rounded += math.ceil(life / step - 1e-9) * step
        billed += max(minimum, math.ceil(life / step - 1e-9) * step)
    rate = (price or 0.0) / 3600
    cost = billed * rate
    always_on = (end - start) * rate
    cold = sorted(m.cold)
    row = {
        "model": m.name,
        "resource": m.resource,
        "gpu_type": m.gpu_type,
        "cpus": m.cpus,
        "price_per_hour": price,
        "price_source": source,
        "requests": m.requests,
        "errors": m.errors,
        "cold_starts": len(cold),
        "cold_start_rate": len(cold) / m.requests if m.requests else 0.0,
        "cold_added_latency_p50_s": statistics.median(cold) if cold else None,
        "cold_added_latency_p99_s": cold[min(len(cold) - 1, math.ceil(0.99 * len(cold)) - 1)]
        if cold
        else None,
        "replica_starts": len(m.replicas),
        "replica_seconds": {
            "busy": busy,
            "warm_idle": idle,
            "loading": loading,
            "prewarmed_unused": unused,
            "billed": billed,
        },
        **_money(cost, always_on, m.requests),
        "loss_reason": None,
    }
    if row["saving_usd"] < 0:
        # the loss in replica-seconds, in three parts: name the largest
        parts = {
            f"the {minimum:g} s billing minimum per replica start": billed - rounded,
            "it ran more than one replica at a time (always-on is one)": lived - (end - start),
            f"billing in whole {step:g} s steps": rounded - lived,
        }
        row["loss_reason"] = max(parts, key=lambda why: parts[why])
    return row


def _money(cost: float, always_on: float, requests: int) -> dict[str, Any]:
    saving = always_on - cost
    return {
        "cost_usd": round(cost, 6),
        "cost_per_1000_requests_usd": round(cost / requests * 1000, 6) if requests else None,
        "always_on_cost_usd": round(always_on, 6),
        "saving_usd": round(saving, 6),
        "saving_pct": saving / always_on * 100 if always_on > 0 else None,
    }


def _total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(r["requests"] for r in rows)
    cold = [r for r in rows if r["cold_starts"]]
    seconds = {k: sum(r["replica_seconds"][k] for r in rows) for k in (*PHASES, "billed")}
    return {
        "requests": requests,
        "errors": sum(r["errors"] for r in rows),
        "cold_starts": sum(r["cold_starts"] for r in rows),
        "cold_start_rate": sum(r["cold_starts"] for r in rows) / requests if requests else 0.0,
        # the worst model's: percentiles of different models' waits do not add up
        "cold_added_latency_p50_s": max(
            (r["cold_added_latency_p50_s"] for r in cold), default=None
        ),
        "cold_added_latency_p99_s": max(
            (r["cold_added_latency_p99_s"] for r in cold), default=None
        ),
        "replica_starts": sum(r["replica_starts"] for r in rows),
        "replica_seconds": seconds,
        **_money(
            sum(r["cost_usd"] for r in rows), sum(r["always_on_cost_usd"] for r in rows), requests
        ),
    }


def _timeline(m: _Model, start: float, end: float, buckets: int = 60) -> dict[str, Any]:
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
    return {"start_ts": start, "bucket_s": width, "replicas": replicas, "requests_per_s": rate}


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


def headline(r: dict[str, Any]) -> str:
    """One sentence: spent, always-on, saved or lost."""
    t = r["total"]
    spent = f"Spent {usd(t['cost_usd'])}; one always-on replica per model: "
    spent += usd(t["always_on_cost_usd"])
    if t["saving_usd"] >= 0:
        pct = "" if t["saving_pct"] is None else f" ({t['saving_pct']:.0f}%)"
        return f"{spent}. Scale to zero saved {usd(t['saving_usd'])}{pct}."
    return f"{spent}. Scale to zero cost {usd(-t['saving_usd'])} more: a loss (see below)."


def loss_sentence(row: dict[str, Any]) -> str:
    return (
        f"{row['model']}: scale to zero cost {usd(-row['saving_usd'])} more than always-on "
        f"here, because of {row['loss_reason']}."
    )


def billed_as(row: dict[str, Any]) -> str:
    """``GPU L4``, ``CPU 2 cores``, ``CPU``."""
    if row["resource"] == "GPU":
        return f"GPU {row['gpu_type']}" if row["gpu_type"] else "GPU"
    return f"CPU {row['cpus']:g} cores" if row["cpus"] else "CPU"


def latency(row: dict[str, Any]) -> str:
    p50, p99 = row["cold_added_latency_p50_s"], row["cold_added_latency_p99_s"]
    return f"{p50:.2f} / {p99:.2f} s" if p50 is not None and p99 is not None else "-"


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Ember cost report: {date_range(r['start_ts'], r['end_ts'])} ({duration(r['span_s'])})",
        "",
        headline(r),
        "",
        *[f"> **Warning:** {w}\n" for w in r["warnings"]],
        "| model | billed as | requests | cold starts | cold p50 / p99 added | busy / warm-idle / "
        "loading / pre-warmed unused replica-s | cost | per 1k req | always-on | saving |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    total = {**r["total"], "model": "**total**", "resource": "", "loss_reason": None}
    for m in [*r["models"], total]:
        g = m["replica_seconds"]
        unit = f" {m['resource']}-s" if m["resource"] else ""
        per_k = m["cost_per_1000_requests_usd"]
        saving = usd(m["saving_usd"]) + (" (loss)" if m["saving_usd"] < 0 else "")
        lines.append(
            f"| {m['model']} | {billed_as(m) if m['resource'] else ''} | {m['requests']} | "
            f"{m['cold_starts']} ({m['cold_start_rate']:.1%}) | {latency(m)} | "
            f"{g['busy']:.0f} / {g['warm_idle']:.0f} / {g['loading']:.0f} / "
            f"{g['prewarmed_unused']:.0f}{unit} | {usd(m['cost_usd'])} | "
            f"{'-' if per_k is None else usd(per_k)} | {usd(m['always_on_cost_usd'])} | "
            f"{saving} |"
        )
    b = r["billing"]
    lines += ["", *[f"- {loss_sentence(m)}" for m in r["models"] if m["loss_reason"]]]
    lines += [f"- Billing: per {b['granularity_s']:g} s, at least {b['minimum_s']:g} s a replica."]
    lines += [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"
