"""The ranged-read limits: defaults, the environment, the allowance of one attempt, and values
out of range refused with one line."""

from __future__ import annotations

import pytest

from weight_cache.errors import BadSetting
from weight_cache.limits import MIN_RATE_ENV, RANGE_DEADLINE_ENV, StoreLimits
from weight_cache.s3 import S3Store


def test_defaults_and_the_allowance_of_an_attempt() -> None:
    limits = StoreLimits()
    assert limits.range_deadline_s == 300 and limits.min_rate_bytes_s == 256 * 1024
    assert limits.attempt_s(8 * 1024 * 1024) == pytest.approx(5 + 32)  # 8 MiB at 256 KiB/s
    assert limits.attempt_s(1 << 40) == 300  # never past the range deadline
    assert StoreLimits(min_rate_bytes_s=0).attempt_s(1 << 40) == 300  # no rate floor


def test_the_environment_sets_them() -> None:
    env = {RANGE_DEADLINE_ENV: "42", MIN_RATE_ENV: "1024"}
    limits = StoreLimits.from_env(env)
    assert limits.range_deadline_s == 42 and limits.min_rate_bytes_s == 1024 * 1024
    assert StoreLimits.from_env({MIN_RATE_ENV: "0"}).min_rate_bytes_s == 0
    assert StoreLimits.from_env({RANGE_DEADLINE_ENV: " "}) == StoreLimits()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({RANGE_DEADLINE_ENV: "soon"}, "EMBER_STORE_RANGE_DEADLINE_S='soon' is not a number"),
        ({RANGE_DEADLINE_ENV: "0"}, "must be a positive number"),
        ({RANGE_DEADLINE_ENV: "inf"}, "must be a positive number"),
        ({MIN_RATE_ENV: "-1"}, "EMBER_STORE_MIN_RATE_KIB_S='-1': must be 0 (off) or positive"),
        ({MIN_RATE_ENV: "nan"}, "must be 0 (off) or positive"),
    ],
)
def test_values_out_of_range_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(BadSetting) as info:
        StoreLimits.from_env(env)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert info.value.status_code == 400


def test_direct_values_are_checked_too() -> None:
    with pytest.raises(BadSetting, match="positive number of seconds"):
        StoreLimits(range_deadline_s=-1)
    with pytest.raises(BadSetting, match="0 \\(off\\) or positive"):
        StoreLimits(min_rate_bytes_s=float("nan"))


def test_an_s3_store_takes_them_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RANGE_DEADLINE_ENV, "7")
    assert S3Store("b", "m").limits.range_deadline_s == 7
    given = StoreLimits(range_deadline_s=9)
    assert S3Store("b", "m", limits=given).limits is given
    monkeypatch.setenv(MIN_RATE_ENV, "fast")
    with pytest.raises(BadSetting, match="not a number"):
        S3Store("b", "m")
