"""A generation request's sampling parameters, validated once whatever route they came by.

Torch-free: the routes validate before anything is queued. Every bad value is an
:class:`InvalidParameter` (400) naming the parameter, so the OpenAI routes can put it in
``error.param``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidInput

MAX_STOPS = 8
MAX_STOP_CHARS = 256


class InvalidParameter(InvalidInput):
    """A sampling parameter is out of range or of the wrong type (400, naming it)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is generated. ``temperature`` 0 is greedy decoding."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _number(param: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(param, f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidParameter(param, f"must be between {low:g} and {high:g}, not {value!r}")
    return float(value)


def _integer(param: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(param, f"must be an integer, not {value!r}")
    if not low <= value <= high:
        raise InvalidParameter(param, f"must be between {low} and {high}, not {value}")
    return value


def flag(param: str, value: Any, default: bool = False) -> bool:
    """A boolean parameter (``stream``, ``include_usage``): absent or None is ``default``."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidParameter(param, f"must be true or false, not {value!r}")
    return value


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidParameter("stop", "must be a string or a list of strings")
    if len(stops) > MAX_STOPS:
        raise InvalidParameter("stop", f"at most {MAX_STOPS} stop strings, not {len(stops)}")
    for s in stops:
        if not s:
            raise InvalidParameter("stop", "a stop string must not be empty")
        if len(s) > MAX_STOP_CHARS:
            raise InvalidParameter("stop", f"a stop string is at most {MAX_STOP_CHARS} characters")
    return tuple(stops)


def sampling_params(
    values: Mapping[str, Any], *, max_tokens_limit: int, default_max_tokens: int = 16
) -> SamplingParams:
    """The parameters in ``values`` (names as the routes take them), each checked; absent or
    None ones take their defaults. ``max_tokens_limit`` bounds ``max_tokens``."""
    max_tokens = values.get("max_tokens")
    # OpenAI's newer name for it: a bad value is named as it was sent
    max_tokens_name = "max_tokens"
    if max_tokens is None and values.get("max_completion_tokens") is not None:
        max_tokens, max_tokens_name = values["max_completion_tokens"], "max_completion_tokens"
    temperature = values.get("temperature")
    top_p = values.get("top_p")
    seed = values.get("seed")
    return SamplingParams(
        max_tokens=default_max_tokens
        if max_tokens is None
        else _integer(max_tokens_name, max_tokens, 1, max_tokens_limit),
        temperature=1.0 if temperature is None else _number("temperature", temperature, 0.0, 2.0),
        top_p=1.0 if top_p is None else _positive_top_p(top_p),
        seed=None if seed is None else _integer("seed", seed, -(2**63), 2**63 - 1),
        stop=_stops(values.get("stop")),
    )


def _positive_top_p(value: Any) -> float:
    top_p = _number("top_p", value, 0.0, 1.0)
    if top_p == 0.0:
        raise InvalidParameter("top_p", "must be greater than 0")
    return top_p
