"""A source is parsed once into a :class:`SourceURI` that knows whether it needs the tier; bad
input is one clear :class:`BadSource`."""

from __future__ import annotations

from pathlib import Path

import pytest

from weight_cache.errors import BadSource
from weight_cache.uri import SourceURI, is_remote, parse_source, parse_uri


def test_s3_uris_keep_bucket_and_prefix() -> None:
    uri = parse_source("s3://models/org/mlp/")
    assert uri == SourceURI("s3", "models", "org/mlp")
    assert str(uri) == "s3://models/org/mlp"
    assert uri.needs_tier and uri.remote
    assert str(parse_source("s3://models")) == "s3://models"


def test_file_uris_and_plain_paths_are_absolute_directories(tmp_path: Path) -> None:
    target = tmp_path / "a dir"
    assert parse_source(f"file://{tmp_path}/a%20dir") == SourceURI("file", "", str(target))
    assert parse_source(str(target)) == SourceURI("file", "", str(target))
    uri = parse_source(str(target))
    assert str(uri) == f"file://{target}"
    assert uri.needs_tier and not uri.remote


def test_a_relative_path_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_source("store").prefix == str(tmp_path.resolve() / "store")


@pytest.mark.parametrize(
    ("text", "repo", "revision"),
    [("hf://org/model", "org/model", None), ("hf://org/model@v1.0", "org/model", "v1.0")],
)
def test_hub_sources_carry_repo_and_revision(text: str, repo: str, revision: str | None) -> None:
    uri = parse_source(text)
    assert (uri.scheme, uri.prefix, uri.revision) == ("hf", repo, revision)
    assert str(uri) == text
    assert uri.remote and not uri.needs_tier  # the Hugging Face cache is its tier


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("s3:///prefix", "an s3:// URI needs a bucket (s3://bucket/prefix)"),
        ("gs://bucket/x", "unsupported scheme 'gs' (s3://, file:// or hf://org/repo)"),
        ("hf://not a repo", "expected hf://org/repo[@revision]"),
        ("hf://org/model@", "expected hf://org/repo[@revision]"),
    ],
)
def test_bad_sources_say_what_was_expected(text: str, says: str) -> None:
    with pytest.raises(BadSource) as caught:
        parse_source(text)
    assert str(caught.value) == f"{text!r}: {says}"


def test_a_store_uri_refuses_the_hub_as_it_always_has() -> None:
    with pytest.raises(BadSource, match=r"unsupported scheme 'hf' \(s3:// or file://\)"):
        parse_uri("hf://org/model")


@pytest.mark.parametrize(
    ("text", "remote"),
    [
        ("s3://b/p", True),
        ("hf://org/m", True),
        ("file:///x", False),
        ("relative/dir", False),
        ("pkg://examples/mlp", False),
    ],
)
def test_is_remote_reads_the_scheme_alone(text: str, remote: bool) -> None:
    assert is_remote(text) is remote
