"""The request checks both servers run: each refusal is an InvalidRequest saying what is wrong."""

from __future__ import annotations

import pytest

from contracts.inference import InputSpec, InvalidRequest, check_against_spec

IMAGE = InputSpec("x", "FP32", (3, 4))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((), "shape needs a batch dimension first"),
        (
            (3, 4),
            "shape [3, 4] has no batch dimension; the model batches (max_batch_size 8), so "
            "its shape is [-1, 3, 4], e.g. [1, 3, 4]",
        ),
        ((1, 3), "shape [1, 3], model expects [-1, 3, 4]"),  # a batch of 1 of the wrong item
        ((9, 3, 4), "batch size 9 is outside 1..8"),
        ((0, 3, 4), "batch size 0 is outside 1..8"),
        ((1, 3, 5), "shape [1, 3, 5], model expects [-1, 3, 4]"),
    ],
)
def test_a_batching_models_shapes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_against_spec(IMAGE, "FP32", shape, batching=True, max_batch=8)
    assert str(caught.value) == f"input 'x': {message}"


def test_what_fits_passes() -> None:
    check_against_spec(IMAGE, "FP32", (2, 3, 4), batching=True, max_batch=8)
    check_against_spec(InputSpec("t", "BYTES", (-1,)), "BYTES", (1, 7), True, 8)
    check_against_spec(IMAGE, "FP32", (3, 4), batching=False, max_batch=0)
    with pytest.raises(InvalidRequest, match="datatype INT8, model expects FP32"):
        check_against_spec(IMAGE, "INT8", (3, 4), batching=False, max_batch=0)
