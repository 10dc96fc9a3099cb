"""Parsing and validating a safetensors header without trusting a byte of it.

Layout: 8 bytes little-endian header length N, N bytes of JSON, then the data. The JSON maps
tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
data), plus an optional ``__metadata__`` of strings. Like the reference implementation we
require the tensors to cover the data exactly, with no overlaps and no holes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from weight_cache.errors import CorruptCheckpoint

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference loader's own bound
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A tensor of a safetensors file: dtype, shape and byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        """The tensor's size in bytes."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class SafetensorsIndex:
    """A safetensors file's parsed header: where the data starts and every tensor."""

    header_bytes: int  # 8 + N: where the data starts
    data_bytes: int
    tensors: tuple[TensorInfo, ...]  # in file order
    metadata: dict[str, str]

    @property
    def file_size(self) -> int:
        """The size the file must have."""
        return self.header_bytes + self.data_bytes

    def as_dict(self) -> dict[str, Any]:
        """The index in the manifest's form (see SafetensorsEntry)."""
        return {
            "header_bytes": self.header_bytes,
            "data_bytes": self.data_bytes,
            "metadata": self.metadata,
            "tensors": {
                t.name: {"dtype": t.dtype, "shape": list(t.shape), "offsets": [t.start, t.end]}
                for t in self.tensors
            },
        }


def header_length(prefix: bytes, *, what: str = "file") -> int:
    """The JSON header's length from the first 8 bytes, bounded."""
    if len(prefix) < 8:
        raise CorruptCheckpoint(
            f"{what} is {len(prefix)} bytes: too short for a safetensors header"
        )
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise CorruptCheckpoint(f"{what}: header of {n} bytes exceeds the {MAX_HEADER_BYTES} limit")
    if n < 2:
        raise CorruptCheckpoint(f"{what}: header of {n} bytes cannot hold a JSON object")
    return int(n)


def parse_header(header: bytes, file_size: int, *, what: str = "file") -> SafetensorsIndex:
    """Validate ``header`` (8-byte length and JSON) against a file of ``file_size`` bytes."""
    n = header_length(header, what=what)
    if len(header) < 8 + n:
        raise CorruptCheckpoint(f"{what}: header is truncated ({len(header) - 8} of {n} bytes)")
    data_start = 8 + n
    if file_size < data_start:
        raise CorruptCheckpoint(f"{what}: {file_size} bytes cannot hold its {n}-byte header")
    try:
        raw = json.loads(header[8:data_start])
    except RecursionError:  # hostile nesting: [[[[...
        raise CorruptCheckpoint(
            f"{what}: header nests too deep to be a safetensors header"
        ) from None
    except ValueError as exc:  # not JSON, not UTF-8, or an integer past Python's digit limit
        raise CorruptCheckpoint(f"{what}: header is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CorruptCheckpoint(f"{what}: header is not a JSON object")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CorruptCheckpoint(f"{what}: __metadata__ must map strings to strings")
    data_bytes = file_size - data_start
    tensors = [_tensor(name, entry, data_start, data_bytes, what) for name, entry in raw.items()]
    tensors.sort(key=lambda t: (t.start, t.end))
    cursor = data_start
    for t in tensors:
        if t.start < cursor:
            raise CorruptCheckpoint(f"{what}: tensor '{t.name}' overlaps the one before it")
        if t.start > cursor:
            raise CorruptCheckpoint(
                f"{what}: {t.start - cursor} bytes before '{t.name}' belong to no tensor"
            )
        cursor = t.end
    if cursor != file_size:
        raise CorruptCheckpoint(
            f"{what}: tensors cover {cursor - data_start} of {data_bytes} data bytes"
        )
    return SafetensorsIndex(data_start, data_bytes, tuple(tensors), dict(metadata))


def _tensor(name: str, entry: Any, data_start: int, data_bytes: int, what: str) -> TensorInfo:
    where = f"{what}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise CorruptCheckpoint(f"{where} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise CorruptCheckpoint(f"{where} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise CorruptCheckpoint(f"{where} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise CorruptCheckpoint(f"{where} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes:
        raise CorruptCheckpoint(
            f"{where}: data_offsets {offsets} fall outside {data_bytes} data bytes"
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise CorruptCheckpoint(
            f"{where}: shape {shape} of {dtype} needs {expected} bytes, offsets give {end - begin}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def read_index(path: str) -> SafetensorsIndex:
    """Parse a local file's header (reads only the header)."""
    import os

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        n = header_length(prefix, what=path)
        return parse_header(prefix + f.read(n), size, what=path)
