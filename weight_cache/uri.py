"""Where a model comes from, parsed once: ``s3://bucket/prefix``, ``file:///abs/dir`` (or a plain
path), ``hf://org/repo[@revision]``.

A :class:`SourceURI` knows what its source needs: a store's model (``s3://``, or a directory a
model was pushed to) is streamed into the local tier by its manifest; a hub model is resolved
through the Hugging Face cache, which is its own tier (:mod:`weight_cache.hub`). Bad input is one
line of :class:`~weight_cache.errors.BadSource`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from contracts.names import HF_REPO
from weight_cache.errors import BadSource

HF_SCHEME = "hf://"
# what a model needs of a hub repository: weights, configs, tokenizers (not pickles, not ONNX)
PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "tokenizer*"]


def parse_hf(source: str) -> tuple[str, str | None]:
    """``(repo, revision)`` of ``hf://org/repo[@revision]``; BadSource otherwise."""
    repo, at, revision = source.removeprefix(HF_SCHEME).partition("@")
    if not source.startswith(HF_SCHEME) or not HF_REPO.match(repo) or (at and not revision):
        raise BadSource(f"{source!r}: expected hf://org/repo[@revision]")
    return repo, revision or None


__all__ = [
    "HF_SCHEME",
    "PATTERNS",
    "Scheme",
    "SourceURI",
    "is_remote",
    "parse_hf",
    "parse_source",
    "parse_uri",
]

Scheme = Literal["s3", "file", "hf"]
_REMOTE = ("s3", "hf")


@dataclass(frozen=True, slots=True)
class SourceURI:
    """A parsed source. ``str()`` gives its canonical form (what the tier records as a source)."""

    scheme: Scheme
    bucket: str  # s3 bucket; empty otherwise
    prefix: str  # s3 key prefix without trailing "/", an absolute directory, or a hub repo id
    revision: str | None = None  # a hub model's revision (None: the default branch)

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        if self.scheme == "hf":
            return f"{HF_SCHEME}{self.prefix}" + (f"@{self.revision}" if self.revision else "")
        return f"file://{self.prefix}"

    @property
    def needs_tier(self) -> bool:
        """Whether the model is a store's (a manifest under a prefix), streamed into the local
        tier; a hub model goes through the Hugging Face cache instead."""
        return self.scheme != "hf"

    @property
    def remote(self) -> bool:
        """Whether the files are somewhere else (S3, the hub), not in a directory here."""
        return self.scheme in _REMOTE


def parse_uri(uri: str) -> SourceURI:
    """A store's URI: ``s3://bucket/prefix``, ``file:///dir`` or a plain path (resolved).

    Anything else, ``hf://`` included (the hub is not a store), raises :class:`BadSource`."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise BadSource(f"{uri!r}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        return SourceURI("s3", parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file":
        return SourceURI("file", "", str(Path(unquote(parsed.netloc + parsed.path)).resolve()))
    if parsed.scheme:
        raise BadSource(f"{uri!r}: unsupported scheme '{parsed.scheme}' (s3:// or file://)")
    return SourceURI("file", "", str(Path(uri).resolve()))


def parse_source(source: str) -> SourceURI:
    """Any source a model can come from: a store's URI (:func:`parse_uri`) or
    ``hf://org/repo[@revision]``. Raises :class:`BadSource` with what was expected."""
    scheme = urlparse(source).scheme
    if scheme == "hf":
        repo, revision = parse_hf(source)
        return SourceURI("hf", "", repo, revision)
    if scheme and scheme not in ("s3", "file"):
        raise BadSource(
            f"{source!r}: unsupported scheme '{scheme}' (s3://, file:// or hf://org/repo)"
        )
    return parse_uri(source)


def is_remote(source: str) -> bool:
    """Whether ``source`` names files elsewhere (``s3://``, ``hf://``): by its scheme alone, so
    any local form (a relative path, ``pkg://``) answers False without being resolved."""
    return urlparse(source).scheme in _REMOTE
