"""Property tests (hypothesis): the tensor codecs round-trip every datatype, JSON (nested or flat)
and binary, and refuse garbage with InvalidInput only; the safetensors header parser accepts only
headers whose tensors tile the file exactly, refuses anything else with CorruptCheckpoint only,
and never reads past the bytes it was given or takes long about it."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.errors import InvalidInput
from runtime.tensors import NUMPY_DTYPES, from_binary, from_json, to_binary, to_json_data
from weight_cache.errors import CorruptCheckpoint
from weight_cache.safetensors_format import DTYPE_SIZES, header_length, parse_header

PROFILE = settings(
    max_examples=150,
    deadline=2000,  # ms per example: a hang or a quadratic blow-up fails
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
NUMERIC = sorted(d for d in NUMPY_DTYPES if d not in ("BYTES", "BF16", "BOOL"))
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def arrays(datatype: str, finite: bool) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    dtype = NUMPY_DTYPES["BF16" if datatype == "BF16" else datatype]
    if datatype == "BOOL":
        return hnp.arrays(np.bool_, SHAPES)
    if dtype.kind == "f":
        elements = st.floats(
            width=dtype.itemsize * 8, allow_nan=not finite, allow_infinity=not finite
        )
        return hnp.arrays(dtype, SHAPES, elements=elements)
    return hnp.arrays(dtype, SHAPES)


def bytes_arrays() -> st.SearchStrategy[np.ndarray[Any, Any]]:
    def build(shape: tuple[int, ...], data: st.DataObject) -> np.ndarray[Any, Any]:
        count = int(np.prod(shape))
        items = data.draw(st.lists(st.binary(max_size=12), min_size=count, max_size=count))
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)

    return st.tuples(SHAPES, st.data()).map(lambda t: build(*t))


def same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype == object:
        return [bytes(x) for x in a.reshape(-1)] == [bytes(x) for x in b.reshape(-1)]
    return a.tobytes() == np.ascontiguousarray(b, dtype=a.dtype).tobytes()  # NaN bits too


# ------------------------------------------------------------------------------ round trips
@PROFILE
@given(
    st.sampled_from([*NUMERIC, "BOOL", "BF16"]).flatmap(
        lambda d: st.tuples(st.just(d), arrays(d, False))
    )
)
def test_binary_round_trip_every_numeric_datatype(case: tuple[str, np.ndarray[Any, Any]]) -> None:
    datatype, array = case
    raw = to_binary(datatype, array)
    assert len(raw) == array.size * NUMPY_DTYPES[datatype].itemsize
    assert same(array, from_binary("x", datatype, array.shape, raw))


@PROFILE
@given(bytes_arrays())
def test_binary_round_trip_bytes(array: np.ndarray[Any, Any]) -> None:
    raw = to_binary("BYTES", array)
    assert same(array, from_binary("x", "BYTES", array.shape, raw))


@PROFILE
@given(
    st.sampled_from([*NUMERIC, "BOOL"]).flatmap(lambda d: st.tuples(st.just(d), arrays(d, True)))
)
def test_json_round_trip_nested_and_flat(case: tuple[str, np.ndarray[Any, Any]]) -> None:
    datatype, array = case
    wire = orjson.dumps(to_json_data("x", datatype, array), option=orjson.OPT_SERIALIZE_NUMPY)
    flat = json.loads(wire)
    assert same(array, from_json("x", datatype, array.shape, flat))
    if array.ndim:  # the same values nested as the shape says decode to the same tensor
        nested = json.loads(json.dumps(np.asarray(flat).reshape(array.shape).tolist()))
        assert same(array, from_json("x", datatype, array.shape, nested))


@PROFILE
@given(st.lists(st.text(max_size=8), min_size=1, max_size=6))
def test_json_round_trip_bytes_as_strings(items: list[str]) -> None:
    array = np.empty(len(items), dtype=object)
    array[:] = [s.encode() for s in items]
    wire = orjson.dumps(to_json_data("x", "BYTES", array))
    assert same(array, from_json("x", "BYTES", array.shape, json.loads(wire)))


# ------------------------------------------------------------------------------ garbage in
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)
ANY_SHAPE = st.lists(st.integers(min_value=0, max_value=6), max_size=4).map(tuple)


@PROFILE
@given(st.sampled_from(sorted(NUMPY_DTYPES)), ANY_SHAPE, JSON_VALUES)
@example("INT64", (1,), [2**64])
@example("UINT64", (2,), [2**64 - 1, -1])
@example("FP16", (1,), [1e300])
@example("BYTES", (1,), [[["a"]]])
@example("INT8", (1,), [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])
def test_json_garbage_is_invalid_input_only(
    datatype: str, shape: tuple[int, ...], data: Any
) -> None:
    try:
        out = from_json("x", datatype, shape, data)
    except InvalidInput as exc:
        assert "'x'" in str(exc)
        return
    assert out.shape == shape


@PROFILE
@given(st.sampled_from(sorted(NUMPY_DTYPES)), ANY_SHAPE, st.binary(max_size=64))
@example("BYTES", (1,), struct.pack("<I", 2**32 - 1) + b"x")
@example("BYTES", (2,), b"\x01\x00\x00")
def test_binary_garbage_is_invalid_input_only(
    datatype: str, shape: tuple[int, ...], raw: bytes
) -> None:
    try:
        out = from_binary("x", datatype, shape, raw)
    except InvalidInput:
        return
    assert out.shape == shape


# ------------------------------------------------------------------------------ safetensors header
def tensor_entries() -> st.SearchStrategy[dict[str, Any]]:
    """Headers that are valid by construction: tensors tile the data region in order."""

    def build(specs: list[tuple[str, str, list[int]]]) -> dict[str, Any]:
        header: dict[str, Any] = {}
        offset = 0
        for name, dtype, shape in specs:
            size = int(np.prod(shape)) * DTYPE_SIZES[dtype]
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        return header

    spec = st.tuples(
        st.text(min_size=1, max_size=6),
        st.sampled_from(sorted(DTYPE_SIZES)),
        st.lists(st.integers(min_value=0, max_value=5), max_size=3),
    )
    return st.lists(spec, max_size=5, unique_by=lambda s: s[0]).map(build)


def encode(header: dict[str, Any]) -> tuple[bytes, int]:
    body = json.dumps(header).encode()
    data = sum(
        e["data_offsets"][1] - e["data_offsets"][0]
        for k, e in header.items()
        if k != "__metadata__"
    )
    return struct.pack("<Q", len(body)) + body, 8 + len(body) + data


@PROFILE
@given(tensor_entries())
def test_valid_headers_parse_and_tile_the_file(header: dict[str, Any]) -> None:
    raw, size = encode(header)
    index = parse_header(raw, size)
    assert index.file_size == size
    cursor = index.header_bytes
    for tensor in index.tensors:
        assert tensor.start == cursor and tensor.end <= size
        cursor = tensor.end
    assert cursor == size


@PROFILE
@given(tensor_entries(), st.data())
def test_a_damaged_valid_header_is_refused_cleanly(
    header: dict[str, Any], data: st.DataObject
) -> None:
    raw, size = encode(header)
    how = data.draw(st.sampled_from(["flip", "cut", "size", "length"]))
    if how == "flip" and len(raw) > 8:
        i = data.draw(st.integers(min_value=8, max_value=len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    elif how == "cut":
        raw = raw[: data.draw(st.integers(min_value=0, max_value=len(raw) - 1))]
    elif how == "size":
        size += data.draw(st.integers(min_value=-size, max_value=64).filter(lambda d: d != 0))
    else:
        raw = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1))) + raw[8:]
    try:
        index = parse_header(raw, size)
    except CorruptCheckpoint:
        return
    assert all(t.end <= size for t in index.tensors) and index.file_size == size


@PROFILE
@given(st.binary(max_size=256), st.integers(min_value=0, max_value=1 << 40))
@example(struct.pack("<Q", 10**8 + 1), 1 << 30)  # over the 100 MB bound: refused before reading
@example(struct.pack("<Q", 4) + b"[[[[", 12)
def test_random_bytes_are_refused_with_corrupt_checkpoint_only(raw: bytes, size: int) -> None:
    with contextlib.suppress(CorruptCheckpoint):
        parse_header(raw, size)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nesting past the JSON parser's recursion limit
        b'{"a": ' + b"9" * 5000 + b"}",  # an integer past Python's digit limit
        b'{"t": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}',
        b'{"t": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}',
        b'{"t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}}',
        b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}',
        b'{"__metadata__": {"a": 1}}',
        b"\xff\xfe{}",
    ],
)
def test_hostile_headers_are_refused_with_corrupt_checkpoint(body: bytes) -> None:
    raw = struct.pack("<Q", len(body)) + body
    with pytest.raises(CorruptCheckpoint):
        parse_header(raw, len(raw) + 4)


@PROFILE
@given(st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
@example(b"[" * 5000 + b"]" * 5000)
@example(b'{"format": 1, "files": [{"path": "../../etc/passwd", "size": 1, "sha256": "00"}]}')
def test_a_hostile_manifest_is_corrupt_checkpoint_only(raw: bytes) -> None:
    from weight_cache.manifest import Manifest

    try:
        manifest = Manifest.loads(raw, where="s3://b/m")
    except CorruptCheckpoint as exc:
        assert "s3://b/m" in str(exc)
        return
    assert all(".." not in f.path.split("/") for f in manifest.files)


def test_the_length_prefix_is_bounded_before_anything_is_read() -> None:
    with pytest.raises(CorruptCheckpoint, match="exceeds"):
        header_length(struct.pack("<Q", 2**63))
