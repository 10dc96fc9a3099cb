"""An unload request's body names a sleep level, or none (a full unload)."""

from __future__ import annotations

import pytest

from runtime.errors import InvalidInput
from runtime.sleep import SleepLevel, unload_level


@pytest.mark.parametrize(
    ("body", "level"),
    [
        (b"", None),
        (b"{}", None),
        (b'{"parameters": {}}', None),
        (b'{"parameters": null}', None),
        (b'{"parameters": {"level": "host"}}', SleepLevel.HOST),
        (b'{"parameters": {"level": "disk", "unload_dependents": false}}', SleepLevel.DISK),
    ],
)
def test_the_level_an_unload_asks_for(body: bytes, level: SleepLevel | None) -> None:
    assert unload_level(body) is level


def test_an_unknown_level_is_a_400_naming_the_choices() -> None:
    with pytest.raises(InvalidInput, match="unknown sleep level 'gpu'; choose 'host', 'disk'"):
        unload_level(b'{"parameters": {"level": "gpu"}}')
    assert InvalidInput.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"parameters": 3}',
        b'{"parameters": []}',  # none of these is "no level": a full unload is never a guess
        b'{"parameters": 0}',
        b'{"parameters": ""}',
        b'{"parameters": false}',
        b'{"parameters": {"levle": "host"}}',  # a misspelt level is no full unload either
        b'{"level": "host"}',  # nor a level beside the parameters
        b'{"parameters": {}, "level": "host"}',
    ],
)
def test_a_malformed_unload_body_is_a_400(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="unload request"):
        unload_level(body)
