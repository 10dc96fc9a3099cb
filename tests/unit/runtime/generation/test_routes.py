"""How a generation's end becomes an answer: a failure is a 500, one cut short by a sleep or an
unload a 503 to retry (never a 200 with truncated text)."""

from __future__ import annotations

import pytest

from runtime.errors import ModelNotReady, RuntimeServerError
from runtime.generation.routes import _failure, _raise_failed
from runtime.generation.streams import Finished


def test_a_finished_generation_is_no_error() -> None:
    for reason in ("stop", "length"):
        _raise_failed(Finished(reason, 3, 4, None))


def test_a_generation_cut_short_is_a_503_to_retry() -> None:
    with pytest.raises(ModelNotReady, match="cut short") as caught:
        _raise_failed(Finished("abort", 3, 1, None))
    assert caught.value.status_code == 503
    assert "cut short" in _failure(Finished("abort", 3, 1, None))


def test_a_failed_generation_is_a_500_saying_why() -> None:
    with pytest.raises(RuntimeServerError, match="generation failed: boom") as caught:
        _raise_failed(Finished("error", 3, 1, "boom"))
    assert caught.value.status_code == 500
