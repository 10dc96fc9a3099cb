"""Bearer tokens from the environment or a file, checked in constant time."""

from __future__ import annotations

from pathlib import Path

import pytest

from activator.auth import Tokens
from activator.errors import ConfigError

TOKEN = "tok-0123456789abcdef"


def test_none_when_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T_ENV", raising=False)
    assert Tokens.load("T_ENV", None, "API") is None


def test_env_and_file_tokens_all_pass_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_ENV", TOKEN)
    file = tmp_path / "tokens"
    file.write_text("# old, then new\n\nold-0123456789abcdef\nnew-0123456789abcdef\n")
    tokens = Tokens.load("T_ENV", file, "API")
    assert tokens is not None
    for good in (TOKEN, "old-0123456789abcdef", "new-0123456789abcdef"):
        assert tokens.allows(f"Bearer {good}".encode())
        assert tokens.allows(f"bearer  {good} ".encode())
        assert tokens.allows_headers(
            [(b"accept", b"*/*"), (b"authorization", f"Bearer {good}".encode())]
        )
    for bad in (
        None,
        b"",
        b"Bearer",
        b"Bearer ",
        f"Basic {TOKEN}".encode(),
        f"Bearer {TOKEN}x".encode(),
        f"Bearer {TOKEN[:-1]}".encode(),
        b"Bearer # old, then new",
    ):
        assert not tokens.allows(bad), bad
    assert not tokens.allows_headers([(b"x-api-key", TOKEN.encode())])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no token in it"),
        ("# only a comment\n", "no token in it"),
        ("short\n", "16 characters"),
    ],
)
def test_bad_token_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "tokens"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        Tokens.load(None, file, "admin")
    assert "short\n" not in str(info.value)


def test_a_missing_token_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"admin token file .*missing"):
        Tokens.load(None, tmp_path / "missing", "admin")
