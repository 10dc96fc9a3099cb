"""Sampling parameters: every bad value is a 400 naming the parameter."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.generation.params import InvalidParameter, SamplingParams, flag, sampling_params


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


def test_max_completion_tokens_stands_in_for_max_tokens_and_is_named_when_bad() -> None:
    assert sampling_params({"max_completion_tokens": 7}, max_tokens_limit=100).max_tokens == 7
    both = {"max_tokens": 3, "max_completion_tokens": 7}
    assert sampling_params(both, max_tokens_limit=100).max_tokens == 3
    with pytest.raises(InvalidParameter) as caught:
        sampling_params({"max_completion_tokens": "7"}, max_tokens_limit=100)
    assert caught.value.param == "max_completion_tokens"


@pytest.mark.parametrize("value", ["yes", 1, 0, [], {}])
def test_a_flag_is_a_boolean(value: Any) -> None:
    with pytest.raises(InvalidParameter) as caught:
        flag("stream", value)
    assert caught.value.param == "stream"
    assert flag("stream", None) is False and flag("stream", True) is True
