#!/usr/bin/env python3
"""Keep-alive/pre-warm policies side by side on the 100-function Azure Functions sample.

Fixed keep-alives (1, 5, 10, 30, 60 min), Knative-like (90 s), the paper's hybrid histogram rule
alone (``hybrid-paper``), Ember's ``hybrid`` (the same with two guards) and ``tiered`` (sleeps
hot -> host RAM -> disk -> zero; default wake costs), each replayed with ``ember simulate``'s
engine. Device-hours are loaded plus loading (waking) time; wake latency is what cold starts and
wakes add to requests (total, and for tiered its p50/p99 over requests). Writes the JSON
(``--out``) and a Pareto plot of the 75th-percentile model's cold-start rate against warm-idle
GPU-hours (``--plot``, SVG).

    scripts/bench_policy.py --out bench-results/policy.json --plot bench-results/policy-pareto.svg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from activator.policy import parse_policy  # noqa: E402
from activator.tiered import Tiered  # noqa: E402
from analysis.simulate import load_trace, simulate  # noqa: E402

POLICIES = [
    "fixed:1m",
    "knative",
    "fixed:5m",
    "fixed:10m",
    "fixed:30m",
    "fixed:60m",
    "hybrid-paper",
    "hybrid",
    "tiered",
]


def plot(rows: list[dict[str, float | str]], path: Path, w: int = 640, h: int = 400) -> None:
    xs = [float(r["warm_idle_gpu_hours"]) for r in rows]
    ys = [float(r["p75_app_cold_start_rate"]) for r in rows]
    x_max, y_max = max(xs) * 1.1, max(ys) * 1.1 or 1.0
    pad = 60
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif'"
        " font-size='12'>",
        f"<line x1='{pad}' y1='{h - pad}' x2='{w - 10}' y2='{h - pad}' stroke='black'/>",
        f"<line x1='{pad}' y1='10' x2='{pad}' y2='{h - pad}' stroke='black'/>",
        f"<text x='{w / 2 - 80}' y='{h - 20}'>warm-idle GPU-hours (lower is better)</text>",
        "<text x='10' y='20'>p75 model cold-start rate (lower is better)</text>",
    ]
    for r, x, y in zip(rows, xs, ys, strict=True):
        cx = pad + x / x_max * (w - pad - 20)
        cy = h - pad - y / y_max * (h - pad - 30)
        color = {"hybrid": "#c0392b", "tiered": "#27ae60"}.get(
            str(r["policy"]).split("-")[0], "#2c3e50"
        )
        parts.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='5' fill='{color}'/>")
        parts.append(f"<text x='{cx + 7:.1f}' y='{cy - 5:.1f}'>{r['policy']}</text>")
    parts.append("</svg>\n")
    path.write_text("".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--plot", help="write the Pareto plot (SVG) here")
    parser.add_argument(
        "--trace", default=str(ROOT.parent / "shared" / "traces" / "azure2019_sample100")
    )
    parser.add_argument("--cold-start", type=float, default=2.0)
    parser.add_argument("--price", type=float, default=0.71)
    args = parser.parse_args()
    traces = load_trace(Path(args.trace))
    rows: list[dict[str, Any]] = []
    for name in POLICIES:
        policy = Tiered() if name == "tiered" else parse_policy(name)
        result = simulate(traces, policy, cold_start_s=args.cold_start, price_per_hour=args.price)
        t = result["total"]
        device_s = sum(m["loaded_gpu_seconds"] + m["loading_seconds"] for m in result["models"])
        row: dict[str, Any] = {
            "policy": name,
            "cold_starts": t["cold_starts"],
            "cold_start_rate": t["cold_start_rate"],
            "p75_app_cold_start_rate": t["p75_app_cold_start_rate"],
            "warm_idle_gpu_hours": t["warm_idle_gpu_seconds"] / 3600,
            "cost_usd": t["cost_usd"],
            "device_hours": device_s / 3600,
            "added_latency_s": t["added_latency_s"],
        }
        for key in ("wakes", "wake_latency_p50_s", "wake_latency_p99_s", "host_memory_seconds"):
            if key in t:
                row[key] = t[key]
        if "wakes" in t:
            row["device_hours_saved_by_sleep"] = t["device_s_saved_by_sleep"] / 3600
            row["device_hours_saved_by_zero"] = t["device_s_saved_by_zero"] / 3600
        rows.append(row)
    out = {"trace": args.trace, "models": len(traces), "results": rows, "settings": vars(args)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    if args.plot:
        plot(rows, Path(args.plot))
    print(
        "| policy | cold starts | rate | p75 model rate | warm-idle GPU-h | device-h "
        "| wake latency added | cost |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        wakes = r.get("wakes")
        extra = (
            f" ({wakes['host']} host, {wakes['disk']} disk wakes; p50/p99 "
            f"{r['wake_latency_p50_s']:g}/{r['wake_latency_p99_s']:g} s)"
            if wakes
            else ""
        )
        print(
            f"| {r['policy']} | {r['cold_starts']} | {r['cold_start_rate']:.2%} | "
            f"{r['p75_app_cold_start_rate']:.1%} | {r['warm_idle_gpu_hours']:.0f} | "
            f"{r['device_hours']:.0f} | {r['added_latency_s']:.0f} s{extra} | "
            f"${r['cost_usd']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
