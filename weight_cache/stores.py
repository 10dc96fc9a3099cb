"""A store for a URI: ``s3://bucket/prefix`` (any S3-compatible endpoint) or ``file:///abs/dir``
(or a plain path).

The seam itself (:class:`~weight_cache.objects.ObjectStore`) lives in :mod:`weight_cache.objects`,
the stores in :mod:`weight_cache.local` and :mod:`weight_cache.s3`; this module picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from weight_cache.errors import BadSource
from weight_cache.limits import StoreLimits
from weight_cache.local import LocalStore
from weight_cache.objects import ObjectStore
from weight_cache.s3 import S3Store

__all__ = ["LocalStore", "S3Store", "SourceURI", "open_store", "parse_uri"]


@dataclass(frozen=True, slots=True)
class SourceURI:
    scheme: str  # "s3" or "file"
    bucket: str  # s3 bucket; empty for files
    prefix: str  # s3 key prefix without trailing "/", or an absolute directory

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"file://{self.prefix}"


def parse_uri(uri: str) -> SourceURI:
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


def open_store(
    uri: str, *, concurrency: int = 16, limits: StoreLimits | None = None
) -> ObjectStore:
    """The store for ``uri``, to use as ``async with open_store(uri) as store:``.

    Nothing connects until the block is entered (an S3 client is made then, and closed when the
    block ends). A bad URI raises :class:`~weight_cache.errors.BadSource` here. ``limits``
    bound an S3 store's ranged reads (default: from the environment, see
    :mod:`weight_cache.limits`); a directory store reads a local disk and needs none.
    """
    source = parse_uri(uri)
    if source.scheme == "file":
        return LocalStore(source.prefix)
    return S3Store(source.bucket, source.prefix, concurrency=concurrency, limits=limits)
