"""How long a store may take over a ranged read: a deadline per range and a minimum rate.

A socket timeout bounds only the wait for each packet, so an endpoint that sends one byte every
couple of seconds never trips it and keeps a pull running for ever. These limits bound the whole
read instead:

* ``range_deadline_s``: one ranged read (every attempt at it, its resumes and back-offs
  included) ends within this many seconds, or fails with
  :class:`~weight_cache.errors.StoreTooSlow`;
* ``min_rate_bytes_s``: each attempt at a range of ``n`` bytes may take ``grace_s`` (for the
  connection and the first byte) plus ``n / min_rate_bytes_s`` seconds; one that takes longer
  is cut off and counts as a failed attempt (its bytes are kept), so an endpoint that trickles
  runs out of attempts. 0 turns the rate floor off (the deadline still holds).

They are set like the other store settings, from the environment (``EMBER_STORE_RANGE_DEADLINE_S``,
``EMBER_STORE_MIN_RATE_KIB_S``) when the store is made, or by ``ember cache`` flags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from weight_cache.errors import BadSetting

RANGE_DEADLINE_ENV = "EMBER_STORE_RANGE_DEADLINE_S"
MIN_RATE_ENV = "EMBER_STORE_MIN_RATE_KIB_S"
DEFAULT_RANGE_DEADLINE_S = 300.0
DEFAULT_MIN_RATE_KIB_S = 256.0


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """How long a ranged read may take, and how slow an attempt at one may be."""

    range_deadline_s: float = DEFAULT_RANGE_DEADLINE_S
    min_rate_bytes_s: float = DEFAULT_MIN_RATE_KIB_S * 1024
    grace_s: float = 5.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.range_deadline_s) and self.range_deadline_s > 0):
            raise BadSetting(
                f"the range read deadline must be a positive number of seconds, "
                f"not {self.range_deadline_s}"
            )
        if not (math.isfinite(self.min_rate_bytes_s) and self.min_rate_bytes_s >= 0):
            raise BadSetting(
                "the minimum transfer rate must be 0 (off) or positive, "
                f"not {self.min_rate_bytes_s}"
            )
        if not (math.isfinite(self.grace_s) and self.grace_s >= 0):
            raise BadSetting(f"the first-byte grace must be 0 or positive, not {self.grace_s}")

    def attempt_s(self, length: int) -> float:
        """How long one attempt at ``length`` bytes may take (never past the range deadline)."""
        if not self.min_rate_bytes_s:
            return self.range_deadline_s
        return min(self.range_deadline_s, self.grace_s + length / self.min_rate_bytes_s)

    def too_slow(
        self, where: str, start: int, length: int, *, attempts: int, out_of_time: bool
    ) -> str:
        """Why a range of ``length`` bytes at ``start`` failed: out of time, or under the rate."""
        what = f"{where}: bytes {start}-{start + length - 1}"
        if out_of_time:
            return (
                f"{what} did not arrive within the {self.range_deadline_s:g} s range read "
                f"deadline ({attempts} attempt{'s' if attempts > 1 else ''})"
            )
        return (
            f"{what} kept arriving under the minimum transfer rate of "
            f"{self.min_rate_bytes_s / 1024:g} KiB/s (gave up after {attempts} attempts)"
        )

    @classmethod
    def from_values(
        cls, *, range_deadline_s: float | None = None, min_rate_kib_s: float | None = None
    ) -> StoreLimits:
        """The defaults, with the values given (None: the default)."""
        return cls(
            range_deadline_s=DEFAULT_RANGE_DEADLINE_S
            if range_deadline_s is None
            else range_deadline_s,
            min_rate_bytes_s=(DEFAULT_MIN_RATE_KIB_S if min_rate_kib_s is None else min_rate_kib_s)
            * 1024,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StoreLimits:
        """The limits the environment sets (unset or empty: the defaults)."""
        return cls.from_values(
            range_deadline_s=_number(environ, RANGE_DEADLINE_ENV),
            min_rate_kib_s=_number(environ, MIN_RATE_ENV),
        )


def _number(environ: Mapping[str, str], name: str) -> float | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadSetting(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and name == RANGE_DEADLINE_ENV):
        what = "a positive number" if name == RANGE_DEADLINE_ENV else "0 (off) or positive"
        raise BadSetting(f"{name}={raw!r}: must be {what}")
    return value
