"""A model's OIP metadata (``GET /v2/models/{m}``), as the predictor and the activator answer it.

The predictor builds it from the model's handler (``runtime/dataplane.py``: ``model_metadata``);
the activator, for a model no replica serves now, builds the same from the model config
(:func:`declared_metadata`) or keeps what a ready replica answered (:func:`parse_metadata`), so a
metadata call never wakes a model. Torch-free: the activator reads model configs as YAML only.

A handler's ``platform`` is its class attribute in ``runtime/handlers/``; :data:`PLATFORMS` says
the same by handler name (tests/unit/contracts/test_metadata.py checks they agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.errors import ConfigError

#: each handler's ``platform``, by the name a model config gives it (``handler:``)
PLATFORMS: Mapping[str, str] = {
    "torch-module": "pytorch",
    "hf-encoder": "pytorch",
    "kserve": "kserve",
    "text-generation": "pytorch",
}
#: handlers whose metadata is the config's ``inputs``/``outputs`` and nothing else, once both are
#: declared. hf-encoder's is not: its embedding size comes from the weights' config.json and
#: its ``properties`` (input limits) from the tokenizer, both read at load.
FROM_CONFIG = frozenset({"torch-module", "kserve"})

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class Tensor(BaseModel):
    """A named tensor's datatype and shape: what a model config's input or output and a model's
    metadata both say (each says whether ``shape`` counts the batch dimension)."""

    model_config = _FROZEN

    name: str
    datatype: str
    shape: tuple[int, ...]


class TensorMetadata(Tensor):
    """One input or output: with batching on, ``shape`` has the batch dimension (-1) in front."""


class ModelMetadata(BaseModel):
    """The OIP model metadata response."""

    model_config = _FROZEN

    name: str
    versions: tuple[str, ...] = ()
    platform: str
    inputs: tuple[TensorMetadata, ...] = ()
    outputs: tuple[TensorMetadata, ...] = ()
    properties: dict[str, str] | None = Field(default=None)  # the spec's string-valued extras

    def as_json(self) -> dict[str, Any]:
        """The response body, as the predictor writes it (no ``properties`` when it has none)."""
        return self.model_dump(mode="json", exclude_none=True)


def declared_metadata(model: Mapping[str, Any], where: str) -> ModelMetadata | None:
    """The metadata a replica of this model config will answer, when the config says it all.

    None when it cannot be known before a replica loads: a handler outside :data:`FROM_CONFIG`,
    or no ``inputs`` or no ``outputs`` declared. ConfigError for tensors that are malformed.
    """
    handler = model.get("handler")
    if handler not in FROM_CONFIG or not model.get("inputs") or not model.get("outputs"):
        return None
    batching = _int(model.get("max_batch_size", 0), f"{where}: max_batch_size") > 0
    return ModelMetadata(
        name=str(model["name"]),
        versions=(str(model.get("version") or "1"),),
        platform=PLATFORMS[str(handler)],
        inputs=_tensors(model["inputs"], batching, f"{where}: inputs"),
        outputs=_tensors(model["outputs"], batching, f"{where}: outputs"),
    )


def parse_metadata(raw: object, model: str) -> ModelMetadata:
    """A replica's answer to ``GET /v2/models/{model}``; ValueError if it is not that."""
    try:
        metadata = ModelMetadata.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"not model metadata: {exc.error_count()} problem(s): {exc}") from None
    if metadata.name != model:
        raise ValueError(f"metadata of model {metadata.name!r}, not {model!r}")
    return metadata


def _tensors(raw: object, batching: bool, where: str) -> tuple[TensorMetadata, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list of {{name, datatype, shape}}")
    out = []
    for i, tensor in enumerate(raw):
        name = tensor.get("name") if isinstance(tensor, dict) else None
        datatype = tensor.get("datatype") if isinstance(tensor, dict) else None
        shape = tensor.get("shape") if isinstance(tensor, dict) else None
        if (
            not isinstance(name, str)
            or not isinstance(datatype, str)
            or not isinstance(shape, list)
        ):
            raise ConfigError(f"{where}[{i}] must have a name, a datatype and a shape (a list)")
        dims = tuple(_int(d, f"{where}[{i}].shape") for d in shape)
        if any(d < -1 for d in dims):
            raise ConfigError(f"{where}[{i}].shape: dimensions are >= 0, or -1 for a variable size")
        # as the predictor reports them: datatypes upper-cased, the batch dimension in front
        out.append(
            TensorMetadata(
                name=name, datatype=datatype.upper(), shape=(-1, *dims) if batching else dims
            )
        )
    return tuple(out)


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return value
