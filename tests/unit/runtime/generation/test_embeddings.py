"""The embeddings route's request checks and answer shape, without a server."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from runtime.generation.embeddings import (
    MAX_INPUTS,
    embedding_data,
    embedding_texts,
    encoding_format,
)
from runtime.generation.params import InvalidParameter


def test_input_is_a_string_or_strings() -> None:
    assert embedding_texts("a") == ["a"]
    assert embedding_texts(["a", "b"]) == ["a", "b"]


@pytest.mark.parametrize(
    "value", [None, 3, [], [1, 2], [[1, 2]], ["a", 3], ["x"] * (MAX_INPUTS + 1)]
)
def test_bad_input_is_named(value: Any) -> None:
    with pytest.raises(InvalidParameter) as caught:
        embedding_texts(value)
    assert caught.value.param == "input"


def test_encoding_format() -> None:
    assert encoding_format(None) == "float" and encoding_format("base64") == "base64"
    with pytest.raises(InvalidParameter) as caught:
        encoding_format("int8")
    assert caught.value.param == "encoding_format"


def test_base64_is_little_endian_float32_of_the_float_answer() -> None:
    vectors = np.random.default_rng(0).random((2, 5), dtype=np.float32)
    floats = embedding_data(vectors, "float")
    packed = embedding_data(vectors, "base64")
    assert [d["index"] for d in packed] == [0, 1]
    for f, b in zip(floats, packed, strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), "<f4")
        np.testing.assert_array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))
