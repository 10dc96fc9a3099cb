"""A store for a URI: ``s3://bucket/prefix`` (any S3-compatible endpoint) or ``file:///abs/dir``
(or a plain path).

The seam itself (:class:`~weight_cache.objects.ObjectStore`) lives in :mod:`weight_cache.objects`,
the stores in :mod:`weight_cache.local` and :mod:`weight_cache.s3`, the URI in
:mod:`weight_cache.uri`; this module picks one.
"""

from __future__ import annotations

from weight_cache.errors import BadSource
from weight_cache.limits import StoreLimits
from weight_cache.local import LocalStore
from weight_cache.objects import ObjectStore
from weight_cache.s3 import S3Store
from weight_cache.uri import SourceURI, parse_uri

__all__ = ["LocalStore", "S3Store", "SourceURI", "open_store", "parse_uri"]


def open_store(
    uri: str | SourceURI, *, concurrency: int = 16, limits: StoreLimits | None = None
) -> ObjectStore:
    """The store for ``uri`` (text, or a :class:`SourceURI` parsed already), to use as
    ``async with open_store(uri) as store:``.

    Nothing connects until the block is entered (an S3 client is made then, and closed when the
    block ends). A bad URI raises :class:`~weight_cache.errors.BadSource` here. ``limits``
    bound an S3 store's ranged reads (default: from the environment, see
    :mod:`weight_cache.limits`); a directory store reads a local disk and needs none.
    """
    source = parse_uri(uri) if isinstance(uri, str) else uri
    if source.scheme == "hf":
        raise BadSource(f"{str(source)!r}: unsupported scheme 'hf' (s3:// or file://)")
    if source.scheme == "file":
        return LocalStore(source.prefix)
    return S3Store(source.bucket, source.prefix, concurrency=concurrency, limits=limits)
