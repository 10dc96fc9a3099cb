"""The cost report's charts, drawn with matplotlib as inline SVG (static: no scripts, no fonts or
files to fetch, so the page opens offline and prints).

Only :mod:`analysis.report_html` imports this module, and nothing in the activator's serving
path imports that: matplotlib is the ``report`` extra, never in the activator's image. Text stays
text (``svg.fonttype: none``), so tick labels are searchable, selectable and readable by a
screen reader; ids are prefixed per chart, so several charts can share one page.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import matplotlib
from matplotlib import dates as mdates
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

REPLICAS = "#c0392b"
RATE = "#2c3e50"
# busy, warm-idle, loading, pre-warmed unused
PHASE_COLORS = ("#27ae60", "#f39c12", "#2980b9", "#95a5a6")
PHASE_LABELS = ("busy", "warm-idle", "loading", "pre-warmed unused")
# asleep at host, at disk
SLEEP_COLORS = ("#8e44ad", "#d2b4de")
_ID = re.compile(r'(\bid="|url\(#|href="#)')
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def timeline(name: str, t: dict[str, Any], *, resource: str) -> str:
    """Replicas up (left axis, steps) and requests per second (right axis) on clock time."""
    width = t["bucket_s"]
    n = len(t["replicas"])
    # matplotlib's dates are days since its epoch (the Unix one, unless matplotlibrc moved it)
    unix = float(mdates.date2num(datetime(1970, 1, 1, tzinfo=UTC)))  # type: ignore[no-untyped-call]
    times = [unix + (t["start_ts"] + i * width) / 86400 for i in range(n + 1)]
    with _style():
        fig = Figure(figsize=(9.5, 2.6))
        ax = fig.add_subplot()
        ax.step(times, [*t["replicas"], t["replicas"][-1]], where="post", color=REPLICAS)
        ax.fill_between(
            times, [*t["replicas"], t["replicas"][-1]], step="post", color=REPLICAS, alpha=0.15
        )
        ax.set_ylabel(f"{resource} replicas up", color=REPLICAS)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0, top=max(1.0, *t["replicas"]) * 1.15)
        rate = ax.twinx()
        mids = [x + width / 2 / 86400 for x in times[:-1]]
        rate.plot(mids, t["requests_per_s"], color=RATE, linewidth=1.5, marker=".", markersize=3)
        rate.set_ylabel("requests / s", color=RATE)
        rate.set_ylim(bottom=0, top=max(max(t["requests_per_s"]) * 1.15, 1e-3))
        rate.spines["right"].set_visible(True)
        locator = mdates.AutoDateLocator(tz=UTC, minticks=4, maxticks=8)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        concise = mdates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_formatter(concise)
        ax.set_xlim(times[0], max(times[-1], times[0] + 1 / 86400))  # a log of one instant
        ax.set_xlabel("time (UTC)")
        ax.set_title(name, loc="left", fontsize=11)
        return _svg(fig, f"{name}: {resource} replicas up and requests per second over time")


def breakdown(rows: list[dict[str, Any]]) -> str:
    """Each model's replica-seconds, stacked: busy, warm-idle, loading, pre-warmed unused."""
    keys = ("busy", "warm_idle", "loading", "prewarmed_unused")
    return _stacked(
        [f"{r['model']} ({r['resource']}-s)" for r in rows],
        [
            (label, color, [r["replica_seconds"][key] for r in rows])
            for key, label, color in zip(keys, PHASE_LABELS, PHASE_COLORS, strict=True)
        ],
        "replica-seconds (GPU-s for GPU models, CPU-s for CPU models)",
        "where each model's replica-seconds went",
    )


def costs(rows: list[dict[str, Any]]) -> str:
    """Scale-to-zero cost next to one always-on replica's, per model, in USD."""
    names = [r["model"] for r in rows]
    ys = range(len(rows))
    with _style():
        fig = Figure(figsize=(9.5, 0.9 + 0.55 * len(rows)))
        ax = fig.add_subplot()
        ax.barh(
            [y - 0.2 for y in ys],
            [r["cost_usd"] for r in rows],
            height=0.38,
            color="#27ae60",
            label="scale to zero (billed)",
        )
        ax.barh(
            [y + 0.2 for y in ys],
            [r["always_on_cost_usd"] for r in rows],
            height=0.38,
            color="#7f8c8d",
            label="one replica always on",
        )
        ax.set_yticks(list(ys), names)
        ax.invert_yaxis()
        top = max([r["always_on_cost_usd"] for r in rows] + [r["cost_usd"] for r in rows])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _dollars(v, top)))
        ax.set_xlabel("USD over the report's span")
        ax.legend(ncols=2, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
        return _svg(fig, "cost with scale to zero and with one always-on replica, per model")


def sleeping(rows: list[dict[str, Any]]) -> str:
    """Each model's seconds asleep on shared replicas, stacked: at host, at disk."""
    return _stacked(
        [r["model"] for r in rows],
        [
            (f"asleep at {level}", color, [r["sleep"]["seconds"][level] for r in rows])
            for level, color in zip(("host", "disk"), SLEEP_COLORS, strict=True)
        ],
        "device-seconds saved by sleeping (seconds asleep on a running replica)",
        "device-seconds each model saved by sleeping, at host and at disk",
    )


def _stacked(
    names: list[str], series: list[tuple[str, str, list[float]]], xlabel: str, title: str
) -> str:
    """Horizontal bars, one per name, each ``series`` (label, color, values) stacked on the
    last; ``title``: the figure's accessible description."""
    with _style():
        fig = Figure(figsize=(9.5, 0.9 + 0.45 * len(names)))
        ax = fig.add_subplot()
        left = [0.0] * len(names)
        for label, color, values in series:
            ax.barh(names, values, left=left, color=color, label=label, height=0.6)
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.legend(ncols=len(series), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
        return _svg(fig, title)


def _dollars(value: float, top: float) -> str:
    return f"${value:,.2f}" if top >= 1 else f"${value:.4f}"


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(
        {
            "svg.fonttype": "none",  # text stays text
            "svg.hashsalt": "ember-cost-report",  # reproducible clip-path ids
            "font.family": "sans-serif",
            "font.size": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "text.parse_math": False,  # "$0.50" is money, not mathtext
        }
    ):
        yield


def _svg(fig: Figure, label: str) -> str:
    """``fig`` as an ``<svg>`` element, its ids prefixed by a hash of its (unique) label."""
    prefix = "c" + hashlib.sha1(label.encode()).hexdigest()[:8] + "-"
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    text = _METADATA.sub("", text[text.index("<svg") :])  # drop the XML prolog and RDF block
    text = _ID.sub(lambda m: m.group(1) + prefix, text)
    escaped = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return text.replace("<svg ", f'<svg role="img" aria-label="{escaped}" ', 1)
