"""The HTML cost report, rendered by a real browser: headless Chromium (Debian's ``chromium``,
which scripts/setup installs) lays out the page ``ember cost-report --format html`` writes for a
generated three-hour event log, and a probe script added to a copy of the page measures what it
drew: every chart has axes whose tick labels have a size on screen, the timelines' x ticks are
clock times. Chromium missing is a failure, never a skip."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ROOT

T0 = 1762160400.0  # 2025-11-03 09:00:00 UTC
# runs in the page once it is parsed: getBBox() needs the layout done
PROBE = """<script>
const charts = [...document.querySelectorAll("figure svg")].map((svg) => {
  const box = svg.getBoundingClientRect();
  const ticks = (kind) => [...svg.querySelectorAll(`g[id*="-${kind}_"] text`)]
    .map((t) => ({text: t.textContent, width: t.getBBox().width}));
  return {label: svg.getAttribute("aria-label"), width: box.width, height: box.height,
          axes: svg.querySelectorAll('g[id*="matplotlib.axis_"]').length,
          xticks: ticks("xtick"), yticks: ticks("ytick")};
});
const cards = [...document.querySelectorAll(".card")].map((c) => c.innerText);
const rows = document.querySelectorAll("tbody tr").length;
const total = document.querySelector("tfoot td")?.innerText;
const warnings = [...document.querySelectorAll(".warning")].map((w) => w.offsetHeight);
const probe = document.createElement("pre");
probe.id = "probe";
probe.textContent = JSON.stringify({charts, cards, rows, total, warnings});
document.body.append(probe);
</script></body>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is missing: scripts/setup installs Debian's chromium package (as root)")


def event_log() -> list[dict[str, Any]]:
    """Three hours: an L4 model woken by three bursts, an unpriced CPU model woken once."""
    events: list[dict[str, Any]] = []

    def ev(kind: str, ts: float, model: str, **fields: Any) -> None:
        events.append({"event": kind, "model": model, "ts": T0 + ts, "mono": ts, **fields})

    for replica, burst in enumerate((600, 4200, 8400), start=1):
        ev("replica_starting", burst, "llm", replica=replica, gpu_type="L4")
        ev("replica_ready", burst + 30, "llm", replica=replica)
        for i in range(60):
            a = T0 + burst + 5 * i
            start = max(a, T0 + burst + 30)
            ev("request", start + 0.5 - T0, "llm", arrival=a, start=start, end=start + 0.5,
               status=200, cold=start > a, queue_s=start - a, replica=replica)  # fmt: skip
        ev("replica_stopped", burst + 900, "llm", replica=replica)
    ev("replica_starting", 6000, "mlp", replica=9)
    ev("replica_ready", 6002, "mlp", replica=9)
    ev("request", 6003, "mlp", arrival=T0 + 6000, start=T0 + 6002, end=T0 + 6003, status=200,
       cold=True, queue_s=2.0, replica=9)  # fmt: skip
    ev("replica_stopped", 6060, "mlp", replica=9)
    ev("state", 3 * 3600, "llm", **{"from": "zero", "to": "zero"})
    return events


def test_chromium_renders_the_report_with_axes_and_time_ticks(tmp_path: Path) -> None:
    browser = chromium()
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in event_log()))
    cmd = [sys.executable, "-m", "ember", "cost-report", "--events", str(log), "--format", "html"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    page = tmp_path / "report.html"
    page.write_text(out.stdout.replace("</body>", PROBE, 1))
    dom = subprocess.run(
        [
            browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
            "--dump-dom", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found is not None, f"the page did not run to its end: {dom.stdout[-2000:]}"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    assert [c.split("\n")[0] for c in probe["cards"]] == [
        "Spent", "Always-on would have cost", "Saved by scaling to zero",
    ]  # fmt: skip
    assert probe["rows"] == 2 and probe["total"] == "total"
    assert len(probe["warnings"]) == 1 and probe["warnings"][0] > 0  # mlp has no price: shown
    charts = probe["charts"]
    assert len(charts) == 4  # cost, replica-seconds, a timeline per model
    for chart in charts:
        assert chart["width"] > 300 and chart["height"] > 100, chart["label"]
        assert chart["axes"] >= 2, chart["label"]
        labelled = [t for t in chart["xticks"] + chart["yticks"] if t["text"] and t["width"] > 0]
        assert len(labelled) >= 4, chart
    for timeline in charts[2:]:
        assert timeline["axes"] == 3  # time, replicas, and the request rate on its own y axis
        clock = [t["text"] for t in timeline["xticks"] if re.fullmatch(r"\d\d:\d\d", t["text"])]
        assert len(clock) >= 3 and clock == sorted(clock), timeline["xticks"]
        assert "09:30" in clock or "10:00" in clock
