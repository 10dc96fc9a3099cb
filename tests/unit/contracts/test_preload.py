"""What a warm-pool standby imports ahead for a stack's models."""

from __future__ import annotations

import json
from pathlib import Path

from contracts.preload import preload_modules
from contracts.stack import ModelSpec
from tests.fixtures.specs import model_spec


def spec(tmp_path: Path, handler: str | None, source: str | None, name: str = "m") -> ModelSpec:
    return model_spec(
        name=name, config_path=tmp_path / "model.yaml", handler=handler, source=source
    )


def family(folder: Path, model_type: object) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))


def test_a_text_generation_model_brings_transformers_and_its_family(tmp_path: Path) -> None:
    family(tmp_path / "model", "llama")
    family(tmp_path / "other", "qwen2")
    specs = [
        spec(tmp_path, "text-generation", "model", "a"),  # relative to its config
        spec(tmp_path, "text-generation", str(tmp_path / "other"), "b"),
        spec(tmp_path, "text-generation", "model", "c"),  # the same family once
    ]
    modules = preload_modules(specs)
    assert modules[0] == "transformers"
    assert modules.count("transformers.models.llama.modeling_llama") == 1
    assert "transformers.models.qwen2.modeling_qwen2" in modules
    assert len(modules) == len(set(modules))


def test_other_models_and_unreadable_families_bring_nothing_more(tmp_path: Path) -> None:
    assert preload_modules([spec(tmp_path, "torch-module", "w"), spec(tmp_path, None, None)]) == []
    family(tmp_path / "bad", "../../etc")
    family(tmp_path / "odd", ["llama"])
    specs = [
        spec(tmp_path, "text-generation", "s3://bucket/llm", "a"),
        spec(tmp_path, "text-generation", "bad", "b"),
        spec(tmp_path, "text-generation", "odd", "c"),
        spec(tmp_path, "text-generation", "missing", "d"),
    ]
    modules = preload_modules(specs)
    assert "transformers" in modules
    assert not [m for m in modules if m.startswith("transformers.models.") and "auto" not in m]
