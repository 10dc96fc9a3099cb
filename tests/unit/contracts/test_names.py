"""The image reference rule (a command engine's ``image:``)."""

from __future__ import annotations

import pytest

from contracts.names import valid_image


@pytest.mark.parametrize(
    "ref",
    [
        "vllm/vllm-openai:v0.9.1",
        "ghcr.io/ggml-org/llama.cpp:server-cuda",
        "registry.example.com:5000/team/engine",
        "localhost:5000/a/b@sha256:" + "0" * 64,
        "ubuntu",
    ],
)
def test_image_references(ref: str) -> None:
    assert valid_image(ref)


@pytest.mark.parametrize(
    "ref",
    ["", "vllm serve", "Vllm/Engine:1", "x/", "-x", "a:b:c", "http://x/y", "x:" + "t" * 129, 5],
)
def test_what_is_not_an_image_reference(ref: object) -> None:
    assert not valid_image(ref)
