"""Sampling parameters: every bad value is a 400 naming the parameter."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.generation.params import InvalidParameter, SamplingParams, sampling_params


def test_defaults_and_values() -> None:
    assert sampling_params({}, max_tokens_limit=100) == SamplingParams()
    params = sampling_params(
        {"max_tokens": 5, "temperature": 0, "top_p": 0.5, "seed": 3, "stop": "x"},
        max_tokens_limit=100,
    )
    assert params == SamplingParams(5, 0.0, 0.5, 3, ("x",))
    assert params.greedy


@pytest.mark.parametrize(
    ("values", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": "7"}, "seed"),
        ({"stop": 3}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["a"] * 9}, "stop"),
    ],
)
def test_bad_values_name_their_parameter(values: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        sampling_params(values, max_tokens_limit=100)
    assert caught.value.param == param
    assert caught.value.status_code == 400
    assert caught.value.message.startswith(param)
