from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from runtime.errors import InvalidInput
from runtime.tensors import (
    NUMPY_DTYPES,
    bf16_from_float32,
    bf16_to_float32,
    check_datatype,
    check_shape,
    datatype_of,
    from_binary,
    from_json,
    to_binary,
    to_json_data,
)


def _nested(data: list[Any], depth: int) -> list[Any]:
    for _ in range(depth):
        data = [data]
    return data


NUMERIC = ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
FLOATS = ["FP16", "FP32", "FP64"]


def sample(datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array([[b"a", b"", "é".encode()], [b"xyz", b"0", b"1"]], dtype=object)
    if datatype == "BF16":
        return bf16_from_float32(np.array([[1.0, -2.5, 3.0], [0.0, 1e3, -1e-3]]))
    info = np.iinfo(NUMPY_DTYPES[datatype]) if datatype in NUMERIC else None
    if info is not None:
        return np.array([[info.min, 0, 1], [2, 3, info.max]], dtype=NUMPY_DTYPES[datatype])
    return np.array([[1.5, -2.25, 0.0], [3.0, 4.5, -0.5]], dtype=NUMPY_DTYPES[datatype])


@pytest.mark.parametrize("datatype", [*NUMERIC, *FLOATS, "BOOL", "BYTES"])
@pytest.mark.parametrize("nested", [True, False])
def test_json_round_trip_every_datatype(datatype: str, nested: bool) -> None:
    array = sample(datatype)
    data = to_json_data("x", datatype, array)
    as_list = data if isinstance(data, list) else data.tolist()
    if nested:
        as_list = np.asarray(as_list, dtype=object).reshape(array.shape).tolist()
    decoded = from_json("x", datatype, array.shape, as_list)
    assert decoded.shape == array.shape
    assert decoded.dtype == array.dtype
    assert (decoded == array).all()


@pytest.mark.parametrize("datatype", [*NUMERIC, *FLOATS, "BOOL", "BYTES", "BF16"])
def test_binary_round_trip_every_datatype(datatype: str) -> None:
    array = sample(datatype)
    raw = to_binary(datatype, array)
    decoded = from_binary("x", datatype, array.shape, raw)
    assert decoded.shape == array.shape
    assert (decoded == array).all()


def test_binary_is_little_endian_row_major() -> None:
    raw = to_binary("INT32", np.array([[1, 2], [3, 4]], dtype=np.int32))
    assert raw == b"\x01\0\0\0\x02\0\0\0\x03\0\0\0\x04\0\0\0"
    assert to_binary("BYTES", np.array([b"ab", b""], dtype=object)) == b"\x02\0\0\0ab\0\0\0\0"


def test_bf16_conversion_rounds_to_nearest_even() -> None:
    values = np.array([1.0, 1.00390625, 1.01171875, -3.5, 65504.0], dtype=np.float32)
    bits = bf16_from_float32(values)
    assert bits.tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC060, 0x4780]
    assert bf16_to_float32(np.array([0x3F80, 0xC060], dtype=np.uint16)).tolist() == [1.0, -3.5]


def test_bytes_nested_as_their_shape_are_read_in_row_major_order() -> None:
    assert from_json("x", "BYTES", (2, 2), [["a", "b"], ["c", "d"]]).tolist() == [
        [b"a", b"b"],
        [b"c", b"d"],
    ]
    assert from_json("x", "BYTES", (2, 2), ["a", "b", "c", "d"]).shape == (2, 2)


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", (2, 2), [1.0, 2.0, 3.0], "needs 4 elements, data has 3"),
        ("FP32", (2, 2), [[1.0, 2.0], [3.0]], "ragged"),
        ("FP32", (2,), ["a", "b"], "does not fit datatype FP32"),
        ("INT32", (2,), [1.5, 2.0], "does not fit datatype INT32"),
        ("UINT8", (2,), [1, 256], "out of range for UINT8"),
        ("UINT8", (1,), [-1], "out of range for UINT8"),
        ("INT8", (1,), [128], "out of range"),
        ("BOOL", (2,), [1, 0], "does not fit datatype BOOL"),
        ("BYTES", (2,), ["a", 1], "BYTES data must be strings"),
        ("BYTES", (3,), ["a", "b"], "needs 3 elements"),
        ("BYTES", (1,), [["a"]], "nested deeper than its shape"),
        ("BYTES", (1,), _nested(["x"], 990), "nested deeper than its shape"),  # not a crash
        ("FP32", (1,), _nested([1.0], 990), "ragged or not numeric"),
        ("BF16", (1,), [1.0], "BF16 has no JSON form"),
    ],
)
def test_json_errors_are_invalid_input(
    datatype: str, shape: tuple[int, ...], data: list, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        from_json("x", datatype, shape, data)


def test_json_scalar_and_empty() -> None:
    assert from_json("x", "FP32", (1,), 2.5).tolist() == [2.5]
    empty = from_json("x", "FP32", (0, 3), [])
    assert empty.shape == (0, 3)


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "message"),
    [
        ("FP32", (2,), b"\0" * 7, "needs 8 bytes, got 7"),
        ("BYTES", (1,), b"\x05\0\0\0ab", "runs past the end"),
        ("BYTES", (1,), b"\x01\0", "prefix is truncated"),
        ("BYTES", (2,), b"\x01\0\0\0a", "needs 2 elements, data has 1"),
    ],
)
def test_binary_errors_are_invalid_input(
    datatype: str, shape: tuple[int, ...], raw: bytes, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        from_binary("x", datatype, shape, raw)


def test_output_errors() -> None:
    with pytest.raises(InvalidInput, match="not UTF-8"):
        to_json_data("y", "BYTES", np.array([b"\xff"], dtype=object))
    with pytest.raises(InvalidInput, match="BF16, which has no JSON form"):
        to_json_data("y", "BF16", np.zeros(1, dtype=np.uint16))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_output_has_no_json_form(dtype: Any, value: float) -> None:
    """Never the null orjson would write: JSON has no NaN or Infinity; binary carries them."""
    array = np.array([[1.0, value]], dtype=dtype)
    with pytest.raises(InvalidInput, match=r"'y' holds NaN or Infinity.*\"binary_data\": true"):
        to_json_data("y", datatype_of(array), array)
    assert np.array_equal(
        np.frombuffer(to_binary(datatype_of(array), array), dtype=dtype),
        array.ravel(),
        equal_nan=True,
    )
    finite = np.array([1.0, 2.5], dtype=dtype)
    assert to_json_data("y", datatype_of(finite), finite).tolist() == [1.0, 2.5]


def test_shape_and_datatype_checks() -> None:
    assert check_shape("x", [1, 2]) == (1, 2)
    with pytest.raises(InvalidInput, match="negative dimension"):
        check_shape("x", [1, -2])
    with pytest.raises(InvalidInput, match="list of integers"):
        check_shape("x", [1, True])
    with pytest.raises(InvalidInput, match="list of integers"):
        check_shape("x", "12")
    assert check_datatype("x", "fp32") == "FP32"
    with pytest.raises(InvalidInput, match="unknown datatype 'FLOAT'"):
        check_datatype("x", "FLOAT")


def test_datatype_of() -> None:
    assert datatype_of(np.zeros(1, dtype=np.float32)) == "FP32"
    assert datatype_of(np.zeros(1, dtype=">i4")) == "INT32"
    assert datatype_of(np.array(["a"])) == "BYTES"
    with pytest.raises(InvalidInput):
        datatype_of(np.zeros(1, dtype=np.complex64))
