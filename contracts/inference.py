"""An inference request's checks that need no tensor: the predictor's and the activator's.

The predictor parses and checks every request with these before decoding its tensors
(``runtime/dataplane.py``); the activator runs the same checks on a request for a model no
replica serves, so that a malformed body never wakes a model only to be answered 400 by its
replica, and answers with the predictor's words. Numpy-free: the activator has none.

Each check raises :class:`InvalidRequest` (a 400 on either server) saying what is wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError
from pydantic import Field as _Field

from contracts.datatypes import DATATYPES

_STRICT = ConfigDict(strict=True, extra="ignore")


class InvalidRequest(ValueError):
    """The caller's mistake: answered 400 with this message."""


class RequestInput(BaseModel):
    model_config = _STRICT

    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    model_config = _STRICT

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = _STRICT

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = _Field(min_length=1)
    outputs: list[RequestOutput] | None = None


# BF16 travels as binary tensor data only: JSON numbers cannot say its bits
BF16_IN_JSON = (
    "input '{name}': BF16 has no JSON form; send it with the binary tensor data extension"
)


class Input(Protocol):
    """What a request's input is checked against: a model's input (the predictor's
    ``TensorSpec``, the activator's :class:`InputSpec`), ``shape`` without the batch
    dimension."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True, slots=True)
class InputSpec:
    """A model's input as a request is checked against it: ``shape`` without the batch
    dimension (-1 for a variable dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def parse_json_object(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    """Parse a JSON object; every failure is an :class:`InvalidRequest` saying what was wrong."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _non_finite_at(raw, exc):
            raise InvalidRequest(
                f"{what} is not valid JSON: {exc}. NaN, Infinity and numbers beyond the double "
                "range are not JSON numbers (RFC 8259); send non-finite values with the binary "
                "tensor data extension"
            ) from None
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


_NUMBER = re.compile(rb"-?[0-9][0-9.eE+-]*")


def _non_finite_at(raw: bytes | memoryview, exc: orjson.JSONDecodeError) -> bool:
    """Whether orjson stopped at NaN or Infinity (which Python's json and Triton would read) or
    at a number past the double range (1e400), judged from the bytes it stopped at (never from
    its message's words)."""
    at = bytes(raw[exc.pos : exc.pos + 64])
    # orjson stops at the N of NaN, the I of Infinity, and after the sign of -Infinity
    if at[:3].lower() in (b"nan", b"inf"):
        return True
    number = _NUMBER.match(at)
    try:
        return number is not None and math.isinf(float(number.group()))
    except ValueError:
        return False


def validation_message(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error: where, and what was expected."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_inference_request(payload: dict[str, Any]) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate(payload)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid inference request: {validation_message(exc)}") from None


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """Validate a request's shape: a list of non-negative integers."""
    if not isinstance(shape, list | tuple):
        raise InvalidRequest(f"input '{name}': shape must be a list of integers, got {shape!r}")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise InvalidRequest(f"input '{name}': shape must be a list of integers, got {shape!r}")
        if dim < 0:
            raise InvalidRequest(f"input '{name}': shape {list(shape)} has a negative dimension")
    return tuple(shape)


def check_datatype(name: str, datatype: Any) -> str:
    if not isinstance(datatype, str) or datatype.upper() not in DATATYPES:
        raise InvalidRequest(
            f"input '{name}': unknown datatype {datatype!r}; expected one of {sorted(DATATYPES)}"
        )
    return datatype.upper()


def check_against_spec(
    spec: Input, datatype: str, shape: tuple[int, ...], batching: bool, max_batch: int
) -> None:
    """A request's input against the model's: datatype, batch size, and every dimension."""
    if datatype != spec.datatype:
        raise InvalidRequest(
            f"input '{spec.name}': datatype {datatype}, model expects {spec.datatype}"
        )
    dims = shape
    if batching:
        if not shape:
            raise InvalidRequest(f"input '{spec.name}': shape needs a batch dimension first")
        if len(shape) == len(spec.shape) and all(
            e in (-1, d) for e, d in zip(spec.shape, shape, strict=True)
        ):  # the item's shape alone: the batch dimension left out
            example = [1, *shape]
            raise InvalidRequest(
                f"input '{spec.name}': shape {list(shape)} has no batch dimension; the model "
                f"batches (max_batch_size {max_batch}), so its shape is "
                f"{[-1, *spec.shape]}, e.g. {example}"
            )
        if not 1 <= shape[0] <= max_batch:
            raise InvalidRequest(
                f"input '{spec.name}': batch size {shape[0]} is outside 1..{max_batch}"
            )
        dims = shape[1:]
    expected = list(spec.shape)
    if len(dims) != len(expected) or any(
        e not in (-1, d) for e, d in zip(expected, dims, strict=False)
    ):
        want = ([-1] if batching else []) + expected
        raise InvalidRequest(f"input '{spec.name}': shape {list(shape)}, model expects {want}")


def check_inputs(
    model: str,
    inputs: Sequence[RequestInput],
    specs: Mapping[str, Input],
    *,
    batching: bool,
    max_batch: int,
) -> list[tuple[RequestInput, str, tuple[int, ...]]]:
    """Every input of a request against the model's (none known: names are not checked): each
    with its datatype and shape checked, in the request's order. Their data is not read."""
    checked: list[tuple[RequestInput, str, tuple[int, ...]]] = []
    seen: set[str] = set()
    for item in inputs:
        name = item.name
        if name in seen:
            raise InvalidRequest(f"input '{name}' is given more than once")
        seen.add(name)
        spec = specs.get(name)
        if specs and spec is None:
            raise InvalidRequest(f"model '{model}' has no input '{name}'; expected {sorted(specs)}")
        datatype = check_datatype(name, item.datatype)
        shape = check_shape(name, item.shape)
        if spec is not None:
            check_against_spec(spec, datatype, shape, batching, max_batch)
        if datatype == "BF16" and "binary_data_size" not in (item.parameters or {}):
            raise InvalidRequest(BF16_IN_JSON.format(name=name))
        checked.append((item, datatype, shape))
    missing = [n for n in specs if n not in seen]
    if missing:
        raise InvalidRequest(f"model '{model}' needs input(s) {missing}")
    if batching and len(checked) > 1:
        sizes = {shape[0] if shape else None for _, _, shape in checked}
        if len(sizes) > 1:
            raise InvalidRequest(f"inputs disagree on the batch size: {sorted(map(str, sizes))}")
    return checked
