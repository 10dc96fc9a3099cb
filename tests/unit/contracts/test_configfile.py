"""Config files read with the file's name in every error, and problems told in our words."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.configfile import (
    MAX_DEPTH,
    MAX_VALUES,
    closest,
    explain,
    key_path,
    looks_like_model_config,
    looks_like_stack,
    read_config,
)
from contracts.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "", "a.yaml is empty"),
        ("a.yaml", "# only a comment\n", "a.yaml is empty"),
        ("a.yaml", "x: 1\ny: [2\n", "a.yaml: line 3, column 1: not valid YAML: expected ','"),
        ("a.yaml", "x: 1\n  y: 2\n", "a.yaml: line 2, column 4: not valid YAML"),
        ("a.json", '{"x": 1,\n}', "a.json: line 2, column 1: not valid JSON"),
        ("a.json", "", "a.json is empty"),
    ],
)
def test_unreadable_files_name_the_file_and_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_config(tmp_path / name)
    assert str(caught.value).startswith(f"{tmp_path}/{message}")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.yaml", "a: " + "[" * 1200 + "]" * 1200),  # past the parser's recursion
        ("a.json", '{"a": ' + "[" * 5000 + "]" * 5000 + "}"),
        ("a.yaml", "a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)),  # parses, too deep
        ("a.yaml", "a:\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(1, MAX_DEPTH + 2))),
    ],
    ids=["yaml-recursion", "json-recursion", "yaml-flow", "yaml-block"],
)
def test_a_config_nested_too_deep_is_refused_in_one_line(
    tmp_path: Path, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    assert str(caught.value) == f"{path}: nested deeper than {MAX_DEPTH} levels; no config is"


def test_a_config_that_holds_itself_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("name: m\noptions: &a [*a]\n")  # a list that is its own item
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH} levels"):
        read_config(path)


def test_aliases_that_expand_past_the_bound_are_refused_without_expanding(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "a.yaml"
    path.write_text("\n".join(lines) + "\n")  # a billion values, a few hundred bytes
    with pytest.raises(ConfigError, match=f"expands to more than {MAX_VALUES} values"):
        read_config(path)
    shared = "a: &a [1, 2, 3]\nb: [*a, *a, *a]\n"  # aliases within the bound are fine
    path.write_text(shared)
    assert read_config(path)["b"] == [[1, 2, 3]] * 3


def test_a_config_as_deep_as_allowed_is_read(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert read_config(path) is not None


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        read_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        read_config(tmp_path)


def test_which_kind_of_file() -> None:
    model = {"name": "m", "handler": "torch-module"}
    stack = {"models": [{"config": "m.yaml"}]}
    assert looks_like_model_config(model) and looks_like_model_config([model])
    assert looks_like_model_config({"models": [model]})
    assert not looks_like_model_config(stack) and not looks_like_model_config({"models": []})
    assert looks_like_stack(stack) and looks_like_stack({"activator": {}})
    assert not looks_like_stack(model) and not looks_like_stack({"models": [model]})


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_batch_size: int = Field(default=0, ge=0)


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[Inner]
    name: str | None = None
    limit: float = Field(default=1.0, gt=0)


def problems(raw: object) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Outer.model_validate(raw)
    return explain(caught.value, Outer, file="f.yaml")


def test_explain_says_each_problem_in_our_words() -> None:
    lines = problems(
        {
            "models": [{"max_batchsize": 1}, {"max_batch_size": -1}],
            "nmae": "x",
            "limit": "lots",
        }
    )
    assert lines == [
        "f.yaml: models[0].max_batchsize: unknown key; did you mean 'max_batch_size'?",
        "f.yaml: models[1].max_batch_size: must be >= 0, not -1",
        "f.yaml: limit: must be a number, not 'lots'",
        "f.yaml: nmae: unknown key; did you mean 'name'?",
    ]
    assert problems({}) == ["f.yaml: models: missing (required)"]
    assert problems({"models": [], "zzz": 1}) == [
        "f.yaml: zzz: unknown key; valid keys: limit, models, name"
    ]
    assert not any("Extra inputs" in line or "Input should" in line for line in lines)


def test_closest_and_key_path() -> None:
    assert closest("Max_Batch_Size", ["max_batch_size", "max_queue_size"]) == "max_batch_size"
    assert closest("zzz", ["max_batch_size"]) is None
    assert key_path(("models", 0, "options", "kwarg")) == "models[0].options.kwarg"
    assert key_path((1, "name")) == "[1].name"
