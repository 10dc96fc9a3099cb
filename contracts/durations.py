"""Durations, one grammar everywhere: ``90s``, ``10m``, ``1h``, ``1h30m``, ``250ms``, ``2d``, or a
bare number meaning seconds.

Every ``*_s`` key of ``ember.yaml`` and of a model config that holds a duration is typed
:data:`Seconds` (or :data:`WholeSeconds`); the policy grammar (``fixed:10m``) reads its duration
with :func:`parse_duration` too, but asks for a unit, since ``fixed:10`` could mean anything.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"\d+(?:\.\d+)?"
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_WITH_UNITS = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d))+")
_BARE = re.compile(_NUMBER)
EXAMPLES = "e.g. 90s, 10m, 1h30m, or seconds as a number"


class MissingUnit(ValueError):
    """A bare number where :func:`parse_duration` was asked for a unit."""


def parse_duration(value: object, *, unit_required: bool = False) -> float:
    """The seconds ``value`` stands for; ValueError saying what a duration looks like if none.

    A number (int or float) is seconds. A string is either a plain number (seconds; refused with
    ``unit_required``) or number-unit pairs, largest first or not, added up: ``1h30m`` is 5400.
    """
    if isinstance(value, bool):  # YAML's yes/no: not a duration, though Python counts it as 1
        raise ValueError(f"{value!r} is not a duration ({EXAMPLES})")
    if isinstance(value, int | float):
        if unit_required:
            raise MissingUnit(f"{value!r} needs a unit: {_with_units(value)}")
        return _finite(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not a duration ({EXAMPLES})")
    text = value.strip()
    if _BARE.fullmatch(text):
        if unit_required:
            raise MissingUnit(f"{text!r} needs a unit: {_with_units(text)}")
        return _finite(float(text), value)
    if not _WITH_UNITS.fullmatch(text):
        raise ValueError(f"{value!r} is not a duration ({EXAMPLES})")
    seconds = sum(float(number) * UNITS[unit] for number, unit in _PART.findall(text))
    return _finite(seconds, value)


def _finite(seconds: float, value: object) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a duration ({EXAMPLES})")
    return seconds


def _with_units(number: object) -> str:
    return f"{number}s, {number}m or {number}h"


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


def _seconds(value: object) -> object:
    # None passes through so that an optional duration stays optional
    return None if value is None else parse_duration(value)


def _whole_seconds(value: object) -> object:
    if value is None:
        return None
    seconds = parse_duration(value)
    if not seconds.is_integer():
        raise ValueError(f"{value!r} must be a whole number of seconds")
    return int(seconds)


Seconds = Annotated[float, BeforeValidator(_seconds)]
"""A duration in seconds (a float) that its config may write with units: ``10m``, ``1h30m``."""

WholeSeconds = Annotated[int, BeforeValidator(_whole_seconds)]
"""A duration in whole seconds (what Kubernetes fields take), with units allowed: ``10m``."""
