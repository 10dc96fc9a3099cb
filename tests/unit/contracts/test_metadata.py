"""A model's metadata from its config, as the predictor answers it; a replica's answer, parsed."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.errors import ConfigError
from contracts.metadata import PLATFORMS, declared_metadata, parse_metadata

TENSORS = {
    "inputs": [{"name": "input", "datatype": "fp32", "shape": [784]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}],
}


def config(**kw: Any) -> dict[str, Any]:
    return {"name": "mlp", "handler": "torch-module", **TENSORS, **kw}


def test_a_batching_models_shapes_get_the_batch_dimension_in_front() -> None:
    metadata = declared_metadata(config(max_batch_size=64, version="3"), "m.yaml")
    assert metadata is not None
    assert metadata.as_json() == {
        "name": "mlp",
        "versions": ["3"],
        "platform": "pytorch",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }


def test_without_batching_shapes_are_as_declared_and_the_version_defaults_to_1() -> None:
    metadata = declared_metadata(config(), "m.yaml")
    assert metadata is not None
    assert metadata.versions == ("1",) and metadata.inputs[0].shape == (784,)


@pytest.mark.parametrize(
    ("model", "platform"),
    [
        (config(handler="kserve"), "kserve"),  # its inputs/outputs are the config's
        (config(handler="hf-encoder"), None),  # its embedding size and limits: read at load
        ({"name": "k", "handler": "kserve"}, None),  # declares nothing: its class knows
        (config(outputs=[]), None),
        (config(handler=None), None),
    ],
)
def test_which_configs_say_all_of_their_metadata(
    model: dict[str, Any], platform: str | None
) -> None:
    metadata = declared_metadata(model, "m.yaml")
    assert (metadata.platform if metadata else None) == platform


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"inputs": {"name": "x"}}, r"inputs must be a list"),
        ({"inputs": [{"name": "x", "datatype": "FP32"}]}, r"inputs\[0\] must have"),
        ({"outputs": [{"name": "y", "datatype": "FP32", "shape": [1.5]}]}, "expected an integer"),
        ({"outputs": [{"name": "y", "datatype": "FP32", "shape": [-2]}]}, ">= 0, or -1"),
    ],
)
def test_malformed_tensors_are_named(tensors: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        declared_metadata(config(**tensors), "m.yaml")


def test_the_platforms_are_the_handlers_own() -> None:
    from runtime.handlers import base

    for handler, target in base._REGISTRY.items():
        module, _, name = target.partition(":")
        cls = getattr(__import__(module, fromlist=[name]), name)
        assert PLATFORMS[handler] == cls.platform, handler


def test_a_replicas_answer_is_parsed_with_its_properties() -> None:
    answer = {
        "name": "minilm",
        "versions": ["1"],
        "platform": "pytorch",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
        "properties": {"max_length": "256"},
    }
    assert parse_metadata(answer, "minilm").as_json() == answer
    with pytest.raises(ValueError, match="not 'other'"):
        parse_metadata(answer, "other")
    with pytest.raises(ValueError, match="not model metadata"):
        parse_metadata({**answer, "surprise": 1}, "minilm")
    with pytest.raises(ValueError, match="not model metadata"):
        parse_metadata({"path": "/v2/models/minilm"}, "minilm")
