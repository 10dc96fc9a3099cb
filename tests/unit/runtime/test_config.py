from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ModelConfig, ServerSettings, load_model_configs, resolve_local_source
from runtime.errors import ConfigError

MLP = """
name: mlp
handler: torch-module
source: weights
options: {module: mlp.py:MLP}
inputs: [{name: input, datatype: fp32, shape: [784]}]
outputs: [{name: logits, datatype: FP32, shape: [10]}]
max_batch_size: 8
preferred_batch_size: [4, 8]
"""


def write(tmp_path: Path, text: str, name: str = "model.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_one_model_with_relative_source(tmp_path: Path) -> None:
    (config,) = load_model_configs(write(tmp_path, MLP))
    assert config.name == "mlp" and config.batching
    assert config.inputs[0].datatype == "FP32"
    assert config.local_source() == tmp_path.resolve() / "weights"


def test_loads_a_list_and_a_models_key(tmp_path: Path) -> None:
    two = "models:\n  - {name: a, handler: hf-encoder}\n  - {name: b, handler: hf-encoder}\n"
    assert [c.name for c in load_model_configs(write(tmp_path, two))] == ["a", "b"]
    as_json = '[{"name": "a", "handler": "kserve", "options": {"model_class": "m:M"}}]'
    assert load_model_configs(write(tmp_path, as_json, "m.json"))[0].handler == "kserve"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MLP + "max_batch_szie: 4\n", "max_batch_szie: Extra inputs are not permitted"),
        (MLP.replace("name: mlp", "name: ../etc"), "name: Value error"),
        (MLP.replace("handler: torch-module", "handler: onnx"), "handler: Input should be"),
        (MLP.replace("[4, 8]", "[16]"), "preferred_batch_size 16 must be between"),
        (MLP + "device: tpu\n", "device: Value error, must be auto, cpu, cuda"),
        (MLP.replace("fp32", "FLOAT"), "unknown datatype 'FLOAT'"),
        (MLP + "max_queue_delay_ms: -1\n", "max_queue_delay_ms"),
        ("- {name: a, handler: hf-encoder}\n- {name: a, handler: hf-encoder}\n", "repeated: ['a']"),
        ("[]", "lists no models"),
        ("- 3\n", "must be a mapping"),
        ("name: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_model_configs(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read model config"):
        load_model_configs(tmp_path / "nope.yaml")


def test_sources(tmp_path: Path) -> None:
    assert resolve_local_source("file:///data/m", None) == Path("/data/m")
    assert resolve_local_source("m", tmp_path) == tmp_path / "m"
    pkg = resolve_local_source("pkg://runtime/handlers", None)
    assert (pkg / "base.py").is_file()
    with pytest.raises(ConfigError, match="'no_such_pkg' is not installed"):
        resolve_local_source("pkg://no_such_pkg/x", None)
    with pytest.raises(ConfigError, match="must be fetched into the local tier first"):
        resolve_local_source("s3://bucket/prefix", None)
    with pytest.raises(ConfigError, match="push it to the regional cache"):
        resolve_local_source("hf://org/repo", None)
    with pytest.raises(ConfigError, match="unknown scheme"):
        resolve_local_source("ftp://x/y", None)
    config = ModelConfig(name="m", handler="hf-encoder")
    with pytest.raises(ConfigError, match="'source' is required"):
        config.local_source()


def test_settings_are_frozen_and_strict() -> None:
    settings = ServerSettings(port=0)
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(ValueError):
        ServerSettings(prot=1)  # type: ignore[call-arg]
