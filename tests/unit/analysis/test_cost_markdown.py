"""The cost report's Markdown and the phrases the HTML page shares with it."""

from __future__ import annotations

from analysis.cost import report
from analysis.cost_markdown import date_range, headline, to_markdown
from tests.unit.analysis.test_cost import LOG, typed


def test_markdown_carries_the_figures() -> None:
    r = report(typed(LOG))
    md = to_markdown(r)
    assert md.startswith("# Ember cost report: 1970-01-01 00:00:00 to 01:00:00 UTC (60 min)\n")
    assert "| m | GPU L4 | 2 | 1 (50.0%) | 10.00 / 10.00 s | 3 / 57 / 15 / 295 GPU-s |" in md
    assert "| **total** |  | 2 | 1 (50.0%) | 10.00 / 10.00 s | 3 / 57 / 15 / 295 |" in md
    assert "Spent $0.0730; one always-on replica per model: $0.7100." in md
    assert "Scale to zero saved $0.6370 (90%)." in md


def test_date_range_and_headline() -> None:
    assert date_range(1762160400, 1762164000) == "2025-11-03 09:00:00 to 10:00:00 UTC"
    assert date_range(1762160400, 1762250400) == "2025-11-03 09:00:00 to 2025-11-04 10:00:00 UTC"
    r = report(typed(LOG), prices={"L4": 100})
    assert headline(r).startswith("Spent $10.28; one always-on replica per model: $100.00.")
