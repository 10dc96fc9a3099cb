"""Request parsing: JSON that is not JSON is a 400 that says what to do instead."""

from __future__ import annotations

import pytest

from runtime.errors import InvalidInput
from runtime.protocol import parse_json_object

NON_FINITE_HINT = (
    "NaN, Infinity and numbers beyond the double range are not JSON numbers (RFC 8259); send "
    "non-finite values with the binary tensor data extension"
)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "nan", "-inf", "1e400"])
def test_non_finite_numbers_are_refused_and_the_binary_extension_named(literal: str) -> None:
    raw = (
        f'{{"inputs": [{{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, {literal}]}}]}}'
    )
    with pytest.raises(InvalidInput) as info:
        parse_json_object(raw.encode(), "request body")
    assert info.value.status_code == 400
    assert info.value.message.startswith("request body is not valid JSON: ")
    assert info.value.message.endswith(NON_FINITE_HINT)


@pytest.mark.parametrize("raw", [b"{not json", b'{"data": [1,]}', b'{"info": x}'])
def test_other_bad_json_gets_no_such_hint(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match="not valid JSON") as info:
        parse_json_object(raw, "request body")
    assert "NaN" not in info.value.message


def test_a_json_value_that_is_not_an_object() -> None:
    with pytest.raises(InvalidInput, match="must be a JSON object, got list"):
        parse_json_object(b"[1]", "request body")
