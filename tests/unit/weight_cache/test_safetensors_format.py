from __future__ import annotations

import contextlib
import json
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weight_cache.errors import CorruptCheckpoint
from weight_cache.safetensors_format import MAX_HEADER_BYTES, parse_header, read_index


def build(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def parse(blob: bytes):
    return parse_header(blob, len(blob), what="t")


def test_reads_what_safetensors_writes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors = {
        "b": torch.ones(3, dtype=torch.bfloat16),
        "a": torch.zeros(2, 4),
        "c": torch.arange(5),
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    index = read_index(str(path))
    assert index.file_size == path.stat().st_size
    assert index.metadata == {"format": "pt"}
    by_name = {t.name: t for t in index.tensors}
    assert (
        by_name["a"].dtype == "F32" and by_name["a"].shape == (2, 4) and by_name["a"].nbytes == 32
    )
    assert by_name["b"].dtype == "BF16" and by_name["c"].dtype == "I64"
    raw = path.read_bytes()
    for t in index.tensors:  # offsets are absolute and point at the tensor's bytes
        assert (
            raw[t.start : t.end] == tensors[t.name].contiguous().view(torch.uint8).numpy().tobytes()
        )


GOOD = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "exceeds the"),
        (struct.pack("<Q", 50) + b"{}", "header is truncated"),
        (struct.pack("<Q", 4) + b"nope", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (
            build({"x": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
            "unknown dtype",
        ),
        (
            build({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
            "invalid shape",
        ),
        (
            build({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8),
            "invalid data_offsets",
        ),
        (
            build({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8),
            "fall outside",
        ),
        (
            build({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
            "needs 12 bytes",
        ),
        (
            build(
                {
                    "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                },
                b"\0" * 8,
            ),
            "overlaps",
        ),
        (
            build({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
            "belong to no tensor",
        ),
        (build(GOOD, b"\0" * 12), "cover 8 of 12"),
        (build({**GOOD, "__metadata__": {"a": 1}}, b"\0" * 8), "__metadata__"),
        (build({"x": "F32"}, b""), "is not an object"),
    ],
)
def test_bad_headers_are_refused(blob: bytes, message: str) -> None:
    with pytest.raises(CorruptCheckpoint, match=message):
        parse(blob)


def test_truncated_data_is_refused() -> None:
    blob = build(GOOD, b"\0" * 8)
    with pytest.raises(CorruptCheckpoint, match="fall outside"):
        parse_header(blob, len(blob) - 3, what="t")


def test_random_bytes_never_escape_as_another_error() -> None:
    rng = random.Random(1234)
    good = build(GOOD, b"\0" * 8)
    for _ in range(3000):
        blob = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        if rng.random() < 0.3:
            blob = blob[: rng.randrange(len(blob) + 1)]
        with contextlib.suppress(CorruptCheckpoint):
            parse(bytes(blob))
