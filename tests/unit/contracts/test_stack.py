"""ember.yaml: defaults, per-model overrides, what comes from the model config; no torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.errors import ConfigError
from contracts.stack import load_stack
from tests.servers import ROOT


def test_the_example_stack_resolves_paths_and_defaults() -> None:
    stack = load_stack(ROOT / "examples" / "ember.yaml")
    assert set(stack.models) == {"mlp", "minilm"}
    mlp, minilm = stack.models["mlp"], stack.models["minilm"]
    assert mlp.config_path == ROOT / "examples" / "mlp" / "model.yaml"
    assert mlp.max_replicas == 2 and mlp.container_concurrency == 64 and mlp.target == 64
    assert mlp.keep_alive_s == 60 and minilm.keep_alive_s == 120
    assert stack.settings.events == ROOT / ".ember" / "events.jsonl"


def test_model_config_defaults_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("name: m\ncontainer_concurrency: 4\ngpu_type: L4\n")
    (tmp_path / "ember.yaml").write_text(
        "activator: {queue_size: 7, deadline_s: 9}\n"
        "models:\n  - {config: m.yaml, deadline_s: 2, target: 1.5}\n"
    )
    (m,) = load_stack(tmp_path / "ember.yaml").models.values()
    assert (m.container_concurrency, m.target, m.queue_size, m.deadline_s) == (4, 1.5, 7, 2)
    assert (m.gpu_type, m.price_per_hour, m.prewarm) == ("L4", None, ())


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("handler: x\n", "no 'name'"),
        ("- {name: a}\n- {name: b}\n", "holds 2 models"),
        ("name: [unclosed\n", "not valid YAML"),
        ("name: ../etc\n", "model name '../etc' must be"),
        ("name: a/b\n", "must be 1-63"),
        ("name: 'x; rm -rf /'\n", "must be 1-63"),
        ("name: '-x'\n", "must be 1-63"),
        (f"name: {'a' * 64}\n", "must be 1-63"),
        ("name: 'm\\n'\n", "must be 1-63"),
    ],
)
def test_bad_model_configs_are_named(tmp_path: Path, model: str, message: str) -> None:
    (tmp_path / "m.yaml").write_text(model)
    (tmp_path / "ember.yaml").write_text("models:\n  - config: m.yaml\n")
    with pytest.raises(ConfigError, match=message):
        load_stack(tmp_path / "ember.yaml")


def test_a_model_listed_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("name: m\n")
    (tmp_path / "ember.yaml").write_text("models:\n  - config: m.yaml\n  - config: m.yaml\n")
    with pytest.raises(ConfigError, match="listed twice"):
        load_stack(tmp_path / "ember.yaml")
