"""The HTML cost report: what a manager reads first; its charts' dependency kept in its place."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from activator.errors import ConfigError
from analysis.cost import report
from analysis.cost_markdown import usd
from analysis.report_html import MISSING, to_html
from tests.servers import ROOT
from tests.unit.analysis.test_cost import typed

T0 = 1762160400.0  # 2025-11-03 09:00:00 UTC


def ev(kind: str, ts: float, model: str, **fields: Any) -> dict[str, Any]:
    return {"event": kind, "model": model, "ts": T0 + ts, "mono": ts, **fields}


def request(ts: float, model: str, replica: int, *, cold: bool = False) -> dict[str, Any]:
    return ev(
        "request", ts + 1, model, arrival=T0 + ts, start=T0 + ts, end=T0 + ts + 1,
        status=200, cold=cold, queue_s=4.0 if cold else 0.0, replica=replica,
    )  # fmt: skip


LOG = [
    # llm: an L4, up 10 min of the hour, saves money
    ev("replica_starting", 0, "llm", replica=1, gpu_type="L4"),
    ev("replica_ready", 20, "llm", replica=1),
    request(20, "llm", 1, cold=True),
    *(request(30 + 10 * i, "llm", 1) for i in range(50)),
    ev("replica_stopped", 600, "llm", replica=1),
    # mlp: a CPU model without a price, 30 s up
    ev("replica_starting", 1000, "mlp", replica=2),
    ev("replica_ready", 1001, "mlp", replica=2),
    request(1001, "mlp", 2, cold=True),
    ev("replica_stopped", 1030, "mlp", replica=2),
    ev("state", 3600, "llm", **{"from": "zero", "to": "zero"}),
]


@pytest.fixture(scope="module")
def page() -> str:
    return to_html(report(typed(LOG)))


def test_the_headline_says_when_what_was_spent_and_saved(page: str) -> None:
    assert "<title>Ember cost report, 2025-11-03 09:00:00 to 10:00:00 UTC</title>" in page
    # 600 s of an L4 at 0.71/h, against the hour always on
    spent, always_on = 600 * 0.71 / 3600, 0.71
    assert f"Spent<b>${spent:.4f}</b>" in page
    assert f"Always-on would have cost<b>${always_on:.4f}</b>" in page
    assert f"Saved by scaling to zero<b>${always_on - spent:.4f}</b>" in page
    assert f"{(always_on - spent) / always_on * 100:.0f}% of always-on" in page


def test_a_table_with_a_totals_row_latency_and_cost_per_1000(page: str) -> None:
    head = re.findall(r"<th scope='col'>([^<]*)</th>", page)
    assert "cold-start latency p50 / p99" in head and "per 1,000 requests" in head
    total = re.search(r"<tfoot><tr>(.*?)</tr></tfoot>", page)
    assert total is not None
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", total.group(1))
    assert cells[0] == "total" and cells[3] == "52" and cells[4] == "2 (3.8%)"
    assert cells[5] == "4.00 / 4.00 s (worst model)"
    assert cells[8] == usd(600 * 0.71 / 3600 / 52 * 1000) == "$2.28"


def test_cpu_models_say_cpu_seconds_and_an_unpriced_one_is_a_visible_warning(page: str) -> None:
    assert "<td>CPU</td>" in page and " CPU-s</td>" in page and " GPU-s</td>" in page
    assert "<td class='loss'>no price</td>" in page
    warning = re.search(r"<p class='warning' role='alert'>(.*?)</p>", page)
    assert warning is not None and "no price for mlp" in warning.group(1)
    assert "--price cpu=USD_PER_CORE_HOUR" in warning.group(1)


def test_a_loss_is_called_a_loss_with_its_reason() -> None:
    short = [
        ev("replica_starting", 0, "m", replica=1, price_per_hour=3.6),
        ev("replica_ready", 5, "m", replica=1),
        request(5, "m", 1, cold=True),
        ev("replica_stopped", 20, "m", replica=1),
        ev("state", 30, "m", **{"from": "zero", "to": "zero"}),
    ]
    page = to_html(report(typed(short)))
    assert "Lost by scaling to zero<b>$0.0300</b>" in page and "100% more than always-on" in page
    assert (
        "m: scale to zero cost $0.0300 more than always-on here, because of the 60 s billing "
        "minimum per replica start."
    ) in page
    assert "<td class='loss'>-$0.0300 (loss)</td>" in page
    assert "saving $-" not in page


def test_the_charts_are_static_svg_with_axes_and_clock_time_ticks(page: str) -> None:
    # nothing to run, nothing to fetch: it opens offline
    assert "<script" not in page and re.search(r"""(src|href)=["']?(https?:)?//""", page) is None
    charts = re.findall(r"<figure>(<svg .*?</svg>)\s*</figure>", page, re.S)
    assert len(charts) == 4  # cost, breakdown, one timeline per model
    for chart in charts:
        assert 'role="img" aria-label="' in chart and "matplotlib.axis_1" in chart
    # text stays text: the timelines' x ticks are clock times, the cost chart's dollars
    timeline = charts[2]
    ticks = re.findall(r'id="c[0-9a-f]{8}-xtick_\d+">.*?<text[^>]*>([^<]*)</text>', timeline, re.S)
    assert len([t for t in ticks if re.fullmatch(r"\d\d:\d\d", t)]) >= 3, ticks
    assert "requests / s" in timeline and "GPU replicas up" in timeline
    assert "$0." in charts[0] and "CPU-s" in charts[1]
    # ids are unique across the page: two charts' clip paths never collide
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_a_missing_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis

    # as on a machine without the extra: neither matplotlib nor the charts module imported yet
    monkeypatch.delitem(sys.modules, "analysis.charts", raising=False)
    monkeypatch.delattr(analysis, "charts", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ConfigError, match=re.escape("pip install 'ember[report]'")) as err:
        to_html(report(typed(LOG)))
    assert str(err.value) == MISSING


def test_only_the_report_imports_matplotlib() -> None:
    """matplotlib is the report extra: the activator's image and serving path never import it."""
    importers: dict[str, set[str]] = {}
    packages = ("activator", "analysis", "contracts", "ember", "knative", "runtime", "weight_cache")
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in _imported(path):
                importers.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    mpl = set().union(
        *(files for name, files in importers.items() if name.startswith("matplotlib"))
    )
    assert mpl == {"analysis/charts.py"}
    assert importers["analysis.charts"] == {"analysis/report_html.py"}
    assert importers["analysis.report_html"] == {"ember/cli.py"}


def _imported(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a import b`` counts as ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_sleeping_on_shared_replicas_has_a_card_a_table_a_definition_and_a_chart() -> None:
    def nap(kind: str, ts: float, model: str, **fields: Any) -> dict[str, Any]:
        return ev(kind, ts, model, group="shared", replica=1, **fields)

    log = [
        ev("replica_starting", 0, "shared", replica=1, gpu_type="L4"),
        ev("replica_ready", 10, "shared", replica=1),
        request(10, "minilm", 1, cold=True),
        nap("sleep", 100, "minilm", level="host"),
        nap("sleep", 200, "bert", level="host"),
        nap("sleep", 400, "minilm", level="disk"),
        nap("wake", 1000, "minilm", level="disk", wake_s=0.004),
        ev("replica_stopped", 1500, "shared", replica=1),  # bert still asleep: ends here
        ev("state", 3600, "shared", **{"from": "zero", "to": "zero"}),
    ]
    page = to_html(report(typed(log), prices={"minilm": 0.72, "bert": 0.72}))
    # minilm: host 300 s, disk 600 s; bert: host 1,300 s; at 0.72 per hour 2,200 s are $0.44
    assert "Saved by sleeping<b>2,200 device-s</b><span class='small'>worth $0.4400</span>" in page
    section = re.search(r"<h2>Saved by sleeping</h2>(.*?)</table>", page, re.S)
    assert section is not None
    rows = [
        re.findall(r"<td[^>]*>([^<]*)</td>", row)
        for row in re.findall(r"<tr>(.*?)</tr>", section.group(1))
    ]
    assert ["minilm", "shared", "300 / 600 s", "900", "$0.1800", "0 / 1", "- / 4.0 ms"] in rows
    assert ["bert", "shared", "1,300 / 0 s", "1,300", "$0.2600", "0 / 0", "-"] in rows
    assert ["total", "", "1,600 / 600 s", "2,200", "$0.4400", "0 / 1", "- / 4.0 ms"] in rows
    assert "asleep, it held no device of its own" in page.lower()
    assert 'aria-label="device-seconds each model saved by sleeping, at host and at disk"' in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_a_page_without_sleeps_says_nothing_about_them(page: str) -> None:
    assert "sleeping" not in page.lower()


def test_a_group_is_one_row_and_one_chart_its_members_rows_under_it() -> None:
    def nap(ts: float, model: str) -> dict[str, Any]:
        return ev("sleep", ts, model, group="shared", replica=1, level="host")

    log = [
        ev("replica_starting", 0, "shared", replica=1, gpu_type="L4"),
        ev("replica_ready", 10, "shared", replica=1),
        request(10, "minilm", 1, cold=True),
        request(20, "bert", 1),
        nap(100, "minilm"),
        nap(200, "bert"),
        ev("replica_stopped", 600, "shared", replica=1),
        ev("state", 3600, "shared", **{"from": "zero", "to": "zero"}),
    ]
    page = to_html(report(typed(log)))
    # always-on: one L4 for the hour, once for the group
    assert "Always-on would have cost<b>$0.7100</b>" in page
    assert "one always-on replica per model or group" in page
    assert "role='alert'" not in page  # its members need no price
    body = re.search(r"<tbody>(.*?)</tbody>", page, re.S)
    assert body is not None
    rows = [
        re.findall(r"<td[^>]*>([^<]*)</td>", row)
        for row in re.findall(r"<tr>(.*?)</tr>", body.group(1))
    ]
    assert [row[0] for row in rows] == ["shared (group)", "minilm (in shared)", "bert (in shared)"]
    assert rows[0][1:4] == ["GPU L4", "$0.7100", "2"]
    assert rows[1] == [
        "minilm (in shared)", "as its group", "-", "1", "1 (100.0%)", "4.00 / 4.00 s",
        "in the shared row", "-", "-", "-", "-",
    ]  # fmt: skip
    # cost, breakdown, the group's timeline (not one per member), sleeping
    charts = re.findall(r"<figure>(<svg .*?</svg>)\s*</figure>", page, re.S)
    assert len(charts) == 4
    assert "shared: GPU replicas up" in page and "minilm: GPU replicas up" not in page
