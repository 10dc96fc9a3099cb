"""One duration grammar: seconds as a number, or number-unit pairs (90s, 10m, 1h30m, 250ms)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError

from contracts.durations import MissingUnit, Seconds, WholeSeconds, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
        (" 10m ", 600.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["10 minutes", "1x", "m", "-5s", "", True, None, [1], "1e999"])
def test_what_is_not_a_duration_says_what_one_looks_like(value: object) -> None:
    with pytest.raises(ValueError, match=r"is not a duration \(e.g. 90s, 10m, 1h30m"):
        parse_duration(value)


def test_a_unit_can_be_required() -> None:
    assert parse_duration("10m", unit_required=True) == 600
    for bare in ("10", 10):
        with pytest.raises(MissingUnit, match="needs a unit: 10s, 10m or 10h"):
            parse_duration(bare, unit_required=True)


class Settings(BaseModel):
    wait_s: Seconds = Field(default=1.0, gt=0)
    maybe_s: Seconds | None = None
    timeout_s: WholeSeconds = 300


def test_as_pydantic_fields() -> None:
    settings = Settings.model_validate({"wait_s": "2m", "maybe_s": "1h", "timeout_s": "10m"})
    assert (settings.wait_s, settings.maybe_s, settings.timeout_s) == (120.0, 3600.0, 600)
    assert Settings().maybe_s is None
    assert isinstance(Settings(timeout_s="5m").timeout_s, int)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="must be a whole number of seconds"):
        Settings(timeout_s="1.5s")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="greater than 0"):
        Settings(wait_s="0s")  # type: ignore[arg-type]
