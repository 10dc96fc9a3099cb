"""Tensor codecs of the Open Inference Protocol: JSON data and the binary tensor data extension.

A decoded tensor is a numpy array. BYTES tensors are object arrays of ``bytes``; BF16 tensors, which
numpy has no type for, are ``uint16`` arrays holding the raw bfloat16 bits (``Tensor.datatype`` says
which). Every malformed input raises :class:`~runtime.errors.InvalidInput` with a message naming the
tensor, never a bare numpy error.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts import inference
from runtime.errors import InvalidInput
from runtime.protocol import caller_mistakes

# datatype -> numpy dtype (little endian, as the binary extension sends them)
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
    "BYTES": np.dtype(object),
}

# numpy dtype kinds a JSON list may hold for each family of datatypes
_JSON_KINDS = {"b": "b", "u": "biu", "i": "biu", "f": "biuf"}

_LEN = struct.Struct("<I")


@dataclass(slots=True)
class Tensor:
    """A named tensor with its protocol datatype. ``array.shape`` is the tensor's shape."""

    name: str
    datatype: str
    array: np.ndarray[Any, Any]

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The protocol datatype for a numpy array (BF16 arrays must be labelled by the caller)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if name not in ("BYTES", "BF16") and array.dtype == dtype:
            return name
    if array.dtype.kind in "iufb" and array.dtype.byteorder == ">":
        return datatype_of(array.astype(array.dtype.newbyteorder("<")))
    raise InvalidInput(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """Validate a request's shape: a list of non-negative integers (400 otherwise)."""
    with caller_mistakes():
        return inference.check_shape(name, shape)


def check_datatype(name: str, datatype: Any) -> str:
    with caller_mistakes():
        return inference.check_datatype(name, datatype)


def _element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


# --------------------------------------------------------------------------------------------- JSON


def from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray[Any, Any]:
    """Decode a JSON input's ``data`` (nested or flat, row-major) into an array of ``shape``."""
    if not isinstance(data, list):
        data = [data]
    count = _element_count(shape)
    if datatype == "BYTES":
        return _bytes_from_json(name, shape, data, count)
    if datatype == "BF16":
        raise InvalidInput(inference.BF16_IN_JSON.format(name=name))
    dtype = NUMPY_DTYPES[datatype]
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input '{name}': data is ragged or not numeric: {exc}") from None
    if raw.size != count:
        raise _count_mismatch(name, shape, count, raw.size)
    if dtype.kind in "iu" and raw.dtype.kind in "fO":
        # numpy widens integers past int64 (UINT64's top half) to float or object: decode exactly
        raw = _wide_integers(name, datatype, data, raw)
    if raw.size and raw.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise InvalidInput(
            f"input '{name}': data of kind '{_kind_name(raw)}' does not fit datatype {datatype}"
        )
    try:
        with np.errstate(over="raise", invalid="raise"):  # 1e300 as FP16: refuse, not inf
            array = raw.astype(dtype, copy=False)
    except FloatingPointError:
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': data does not fit {datatype}: {exc}") from None
    if dtype.kind in "iu" and raw.dtype != dtype and raw.size and not np.array_equal(array, raw):
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    return array.reshape(shape)


def _wide_integers(
    name: str, datatype: str, data: list[Any], raw: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    values = np.array(data, dtype=object).reshape(-1)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.tolist()):
        return raw  # really floats: the kind check below reports it
    info = np.iinfo(NUMPY_DTYPES[datatype])
    if any(v < info.min or v > info.max for v in values.tolist()):
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    return np.array(values.tolist(), dtype=NUMPY_DTYPES[datatype]).reshape(raw.shape)


def _kind_name(raw: np.ndarray[Any, Any]) -> str:
    return {"b": "boolean", "i": "integer", "u": "integer", "f": "float"}.get(
        raw.dtype.kind, "string"
    )


def _bytes_from_json(
    name: str, shape: tuple[int, ...], data: list[Any], count: int
) -> np.ndarray[Any, Any]:
    flat: list[bytes] = []
    # row-major, without recursion: nesting as deep as the JSON parser allows is not a crash
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            if len(stack) >= max(1, len(shape)):  # flat, or nested as its shape, no deeper
                raise InvalidInput(
                    f"input '{name}': data is nested deeper than its shape {list(shape)}"
                )
            stack.append(iter(item))
        elif isinstance(item, str):
            flat.append(item.encode("utf-8"))
        elif isinstance(item, bytes):
            flat.append(item)
        else:
            raise InvalidInput(
                f"input '{name}': BYTES data must be strings, got {type(item).__name__}"
            )
    return _object_array(name, shape, flat, count)


_END = object()


def _object_array(
    name: str, shape: tuple[int, ...], items: list[bytes], count: int
) -> np.ndarray[Any, Any]:
    if len(items) != count:
        raise _count_mismatch(name, shape, count, len(items))
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def _count_mismatch(name: str, shape: tuple[int, ...], count: int, got: int) -> InvalidInput:
    return InvalidInput(
        f"input '{name}': shape {list(shape)} needs {count} elements, data has {got}"
    )


def _as_bytes(item: Any) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode("utf-8")


def to_json_data(name: str, datatype: str, array: np.ndarray[Any, Any]) -> Any:
    """Flat, row-major JSON data for an output. Numeric arrays go to orjson as they are."""
    if datatype == "BYTES":
        out: list[str] = []
        for item in array.reshape(-1):
            try:
                out.append(_as_bytes(item).decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"output '{name}' holds bytes that are not UTF-8; request it with "
                    '"binary_data": true'
                ) from None
        return out
    if datatype == "BF16":
        raise InvalidInput(
            f"output '{name}' is BF16, which has no JSON form; request it with "
            '"binary_data": true'
        )
    check_json_finite(name, array)
    return np.ascontiguousarray(array.reshape(-1))


def check_json_finite(name: str, array: np.ndarray[Any, Any]) -> None:
    """Refuse an output JSON cannot carry: NaN and Infinity are not JSON numbers (RFC 8259).

    orjson would write them as ``null``, a silently wrong answer; Triton writes the non-standard
    literals ``NaN``/``Infinity``, which strict JSON parsers reject. The binary tensor data
    extension carries them exactly.
    """
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        raise InvalidInput(
            f"output '{name}' holds NaN or Infinity, which JSON cannot represent; request it "
            'with "binary_data": true'
        )


# ------------------------------------------------------------------------------------------- binary


def from_binary(
    name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview
) -> np.ndarray[Any, Any]:
    """Decode one tensor of the binary tensor data extension (row-major, little endian)."""
    count = _element_count(shape)
    if datatype == "BYTES":
        return _bytes_from_binary(name, shape, raw, count)
    dtype = NUMPY_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} of {datatype} needs {expected} bytes, "
            f"got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def _bytes_from_binary(
    name: str, shape: tuple[int, ...], raw: bytes | memoryview, count: int
) -> np.ndarray[Any, Any]:
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput(f"input '{name}': BYTES element length prefix is truncated")
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input '{name}': BYTES element runs past the end of its data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return _object_array(name, shape, items, count)


def to_binary(datatype: str, array: np.ndarray[Any, Any]) -> bytes:
    """Serialise an output for the binary tensor data extension."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.reshape(-1):
            raw = _as_bytes(item)
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    dtype = NUMPY_DTYPES[datatype]
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def bf16_from_float32(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Round float32 values to bfloat16 bits (round to nearest even), as ``uint16``."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def bf16_to_float32(bits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Widen bfloat16 bits (``uint16``) to float32 exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
