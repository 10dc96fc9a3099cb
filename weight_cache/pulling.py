""":func:`pull`: a model's source onto this machine, whatever it names.

A store's model (``s3://bucket/prefix``, ``file:///dir`` or a directory a model was pushed to)
is streamed by its manifest into the local tier, or found there; a hub model
(``hf://org/repo[@revision]``) is resolved through the Hugging Face cache, its own tier. Either
way the answer is a local directory holding the model's files (a :class:`FetchReport`), and for a
store's model a ``sink`` sees the bytes as they arrive, so tensors can be made during the
download.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from weight_cache import hub
from weight_cache.fetch import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CONCURRENCY,
    FetchReport,
    fetch_to_tier,
    read_manifest,
)
from weight_cache.limits import StoreLimits
from weight_cache.manifest import Manifest
from weight_cache.stores import open_store
from weight_cache.streaming import FetchSink
from weight_cache.tier import LocalTier
from weight_cache.uri import SourceURI, parse_source

__all__ = ["pull"]


async def pull(
    source: str | SourceURI,
    tier: LocalTier | None,
    *,
    sink: FetchSink | None = None,
    progress: Callable[[int], None] | None = None,
    planned: Callable[[Manifest], None] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    limits: StoreLimits | None = None,
    hold: bool = False,
    commit_in_background: bool = False,
) -> FetchReport:
    """The model ``source`` names, in a local directory: ``report.path``.

    ``source`` is parsed once (:func:`~weight_cache.uri.parse_source`; a bad one raises
    :class:`~weight_cache.errors.BadSource`). A source that needs the tier
    (:attr:`SourceURI.needs_tier`) is fetched into ``tier`` unless it is there already
    (``report.hit``): its manifest is read first and handed to ``planned`` (the total to expect
    before any byte arrives), then ``progress`` hears of each range's bytes and ``sink`` of each
    file's as they land (see :func:`~weight_cache.fetch.fetch_to_tier` for ``hold`` and
    ``commit_in_background``; ``report.manifest`` is the manifest). ``concurrency`` bounds the
    store's connections and the ranged reads in flight; ``limits`` bound an S3 store's reads. A
    hub source is resolved through the Hugging Face cache instead (``tier``, ``sink`` and the
    rest unused) and ``report.fetch_s`` is the time that took.
    """
    uri = parse_source(source) if isinstance(source, str) else source
    if not uri.needs_tier:
        started = time.perf_counter()
        path = await asyncio.to_thread(hub.resolve, str(uri))
        return FetchReport(path, False, fetch_s=time.perf_counter() - started)
    if tier is None:
        raise ValueError(f"pulling {uri} needs the local tier")
    async with open_store(uri, concurrency=concurrency, limits=limits) as store:
        started = time.perf_counter()
        manifest = await read_manifest(store)
        manifest_s = time.perf_counter() - started
        if planned is not None:
            planned(manifest)
        report = await fetch_to_tier(
            store,
            tier,
            manifest=manifest,
            concurrency=concurrency,
            chunk_bytes=chunk_bytes,
            progress=progress,
            commit_in_background=commit_in_background,
            hold=hold,
            sink=sink,
        )
    report.plan_s += manifest_s
    return report
