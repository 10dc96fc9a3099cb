"""A command engine's command and name, the same on one machine and on Knative."""

from __future__ import annotations

import pytest

from contracts.engine import command_argv, served_as
from runtime.config import COMMAND_FIELDS


def test_every_placeholder_a_config_may_name_is_filled() -> None:
    command = ["serve", *(f"{{{f}}}" for f in COMMAND_FIELDS), "{{literal}}", "--x={port}"]
    argv = command_argv(command, weights="/w", port=8080, host="0.0.0.0", model="m")
    assert argv == ["serve", "/w", "8080", "0.0.0.0", "m", "{literal}", "--x=8080"]
    with pytest.raises(KeyError):  # what the config's check refuses, the caller reports
        command_argv(["{nope}"], weights="/w", port=1, host="h", model="m")


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ([], None),  # it lists nothing: the model's own name
        (["m"], None),
        (["other", "m"], None),
        (["/ember/weights"], "/ember/weights"),  # pinned to its weights' path
        (["a", "b"], "a"),
    ],
)
def test_requests_are_renamed_only_to_a_name_the_server_lists(
    listed: list[str], expected: str | None
) -> None:
    assert served_as("m", listed) == expected
