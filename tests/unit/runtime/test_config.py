from __future__ import annotations

import re
from pathlib import Path

import pytest

from runtime.config import (
    ModelConfig,
    ServerSettings,
    load_model_config_files,
    load_model_configs,
    resolve_local_source,
)
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


def test_several_files_serve_every_model_each_resolved_against_its_own_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write(tmp_path / "a", MLP)
    second = write(tmp_path / "b", MLP.replace("name: mlp", "name: other"), "more.yaml")
    configs = load_model_config_files([first, second])
    assert [c.name for c in configs] == ["mlp", "other"]
    assert configs[0].local_source() == (tmp_path / "a").resolve() / "weights"
    assert configs[1].local_source() == (tmp_path / "b").resolve() / "weights"


def test_a_model_defined_in_two_files_is_an_error_naming_both(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    first = write(tmp_path, MLP)
    second = write(tmp_path / "b", MLP + "version: '2'\n", "again.yaml")
    with pytest.raises(ConfigError) as caught:
        load_model_config_files([first, second])
    assert str(caught.value) == (
        f"{second}: model 'mlp' is already defined in {first}; a model name must be unique "
        "across the config files"
    )
    with pytest.raises(ConfigError, match="the same config file is given twice"):
        load_model_config_files([first, first])


def test_the_problems_of_every_file_are_reported_together(tmp_path: Path) -> None:
    bad = write(tmp_path, MLP.replace("max_batch_size", "max_batch_szie"), "bad.yaml")
    with pytest.raises(ConfigError) as caught:
        load_model_config_files([bad, tmp_path / "missing.yaml"])
    lines = str(caught.value).splitlines()
    assert any(line.startswith(f"{bad}:") for line in lines)
    assert any("missing.yaml" in line for line in lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MLP + "max_batch_szie: 4\n",
            "max_batch_szie: unknown key; did you mean 'max_batch_size'?",
        ),
        (MLP.replace("name: mlp", "name: ../etc"), "name: must be 1-63 letters"),
        (
            MLP.replace("handler: torch-module", "handler: onnx"),
            "handler: 'onnx' is not one of 'torch-module', 'hf-encoder', 'kserve' or "
            "'text-generation'",
        ),
        (MLP.replace("[4, 8]", "[16]"), "preferred_batch_size 16 must be between"),
        (MLP + "device: tpu\n", "device: must be auto, cpu, cuda"),
        (MLP.replace("fp32", "FLOAT"), "inputs[0].datatype: unknown datatype 'FLOAT'"),
        (MLP + "max_queue_delay_ms: -1\n", "max_queue_delay_ms: must be >= 0, not -1"),
        (MLP + "keep_alive_s: soon\n", "keep_alive_s: 'soon' is not a duration (e.g. 90s"),
        ("- {name: a, handler: hf-encoder}\n- {name: a, handler: hf-encoder}\n", "repeated: ['a']"),
        ("[]", "lists no models"),
        ("- 3\n", "[0]: a model config is a mapping of keys"),
        ("name: [unclosed\n", "line 2, column 1: not valid YAML"),
        ("", "is empty"),
        ("# nothing yet\n", "is empty"),
        ("models:\n  - config: m.yaml\n", "is a stack file (ember.yaml), not a model config: use"),
        ("activator: {}\nmodels: []\n", "use `ember up --config"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_model_configs(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load_model_configs(tmp_path / "nope.yaml")


def test_every_problem_is_one_line_naming_the_file_and_the_key(tmp_path: Path) -> None:
    text = MLP.replace("max_batch_size", "max_batchsize").replace("{module:", "{kwarg: {}, module:")
    path = write(tmp_path, text.replace("preferred_batch_size: [4, 8]\n", ""))
    with pytest.raises(ConfigError) as caught:
        load_model_configs(path)
    assert str(caught.value).splitlines() == [
        f"{path}: max_batchsize: unknown key; did you mean 'max_batch_size'?",
        f"{path}: options.kwarg: unknown option of the torch-module handler; did you mean "
        "'kwargs'?",
    ]


@pytest.mark.parametrize(
    ("handler", "options", "message"),
    [
        ("torch-module", "{}", "options.module: missing (required)"),
        (
            "torch-module",
            "{module: m.py:M, strict: maybe}",
            "options.strict: must be true or false",
        ),
        (
            "hf-encoder",
            "{max_lenght: 128}",
            "options.max_lenght: unknown option of the hf-encoder ",
        ),
        ("hf-encoder", "{max_length: 1}", "options.max_length: must be >= 2, not 1"),
        (
            "kserve",
            "{model_class: m:M, kwarg: {}}",
            "options.kwarg: unknown option of the kserve handler; did you mean 'kwargs'?",
        ),
        ("kserve", "{modelclass: m:M}", "options.modelclass: unknown option"),
    ],
)
def test_handler_options_are_checked_when_the_file_is_read(
    tmp_path: Path, handler: str, options: str, message: str
) -> None:
    path = write(tmp_path, f"name: m\nhandler: {handler}\noptions: {options}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {message}")):
        load_model_configs(path)


def test_problems_of_a_list_name_the_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path, "models:\n  - {name: a, handler: hf-encoder}\n  - {name: b, hander: x}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_model_configs(path)
    lines = str(caught.value).splitlines()
    assert f"{path}: models[1].hander: unknown key; did you mean 'handler'?" in lines
    # with the key spelled right and no handler named, that is the problem said
    path = write(tmp_path, "models:\n  - {name: a, handler: hf-encoder}\n  - {name: b}\n")
    with pytest.raises(ConfigError, match=r"models\[1\]: 'handler' is required"):
        load_model_configs(path)


def test_durations_take_units(tmp_path: Path) -> None:
    text = MLP + "keep_alive_s: 10m\nprewarm: [{cron: '0 8 * * *', duration_s: 1h30m}]\n"
    (config,) = load_model_configs(write(tmp_path, text))
    assert config.keep_alive_s == 600 and config.prewarm[0].duration_s == 5400
    (config,) = load_model_configs(write(tmp_path, MLP + "keep_alive_s: 90\n"))
    assert config.keep_alive_s == 90


def test_sources(tmp_path: Path) -> None:
    assert resolve_local_source("file:///data/m", None) == Path("/data/m")
    assert resolve_local_source("m", tmp_path) == tmp_path / "m"
    pkg = resolve_local_source("pkg://runtime/handlers", None)
    assert (pkg / "base.py").is_file()
    with pytest.raises(ConfigError, match="'no_such_pkg' is not installed"):
        resolve_local_source("pkg://no_such_pkg/x", None)
    with pytest.raises(ConfigError, match="must be fetched into the local tier first"):
        resolve_local_source("s3://bucket/prefix", None)
    with pytest.raises(ConfigError, match="must be fetched into the local tier first"):
        resolve_local_source("hf://org/repo", None)
    with pytest.raises(ConfigError, match="push it to the regional cache"):
        resolve_local_source("gs://bucket/m", None)
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


def test_a_bare_hub_id_as_source_names_the_hf_form(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: m\nhandler: hf-encoder\nsource: sentence-transformers/all-MiniLM-L6-v2\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_model_configs(path)
    assert str(caught.value) == (
        f"{path}: source: 'sentence-transformers/all-MiniLM-L6-v2' is no directory here; a "
        "Hugging Face Hub model is written hf://sentence-transformers/all-MiniLM-L6-v2 (or "
        "hf://sentence-transformers/all-MiniLM-L6-v2@REVISION)"
    )
    # a folder that happens to look like an id is a folder
    (tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2").mkdir(parents=True)
    (config,) = load_model_configs(path)
    assert config.local_source() == tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2"
    path.write_text("name: m\nhandler: hf-encoder\nsource: hf://org/model@v1\n")
    (config,) = load_model_configs(path)
    assert config.source == "hf://org/model@v1"
