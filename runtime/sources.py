"""Where a model's files come from: local directories as they are, ``s3://`` through the local tier,
``hf://org/repo[@revision]`` through the Hugging Face cache (:mod:`weight_cache.hub`).

An ``s3://bucket/prefix`` source (pushed with ``ember cache push``) is streamed into the node's
local tier once; every later start, in any process on the node, loads from the tier without
touching S3. The handler then sees a local directory. For the torch handlers the stream also
makes the tensors as their bytes arrive (views of the tier file on the CPU, copies through pinned
staging on a GPU); :class:`Localized` carries them to the handler's ``load(tensors=...)``, so the
weights are in place when the download ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.config import ModelConfig
from runtime.handlers.base import StreamedTensors
from weight_cache import is_remote, parse_source

if TYPE_CHECKING:
    from weight_cache import LocalTier, Manifest, TensorSink

log = logging.getLogger("ember.runtime")


@dataclass
class Localized:
    config: ModelConfig
    phases: dict[str, float]
    release: Callable[[], None]
    tensors: StreamedTensors | None = None  # made during the download, for the handler's load

    def take_tensors(self) -> StreamedTensors | None:
        """The streamed tensors, once: the caller becomes their only holder, so they live only
        as long as the handler that adopts them (or until its load fails)."""
        tensors, self.tensors = self.tensors, None
        return tensors


def _nothing() -> None:
    return None


class WeightSources:
    def __init__(
        self,
        *,
        cache_dir: Path,
        budget_bytes: int | None = None,
        concurrency: int = 8,
        chunk_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.cache_dir = cache_dir
        self.budget_bytes = budget_bytes
        self.concurrency = concurrency
        self.chunk_bytes = chunk_bytes
        self._commits: set[asyncio.Task[None]] = set()
        self._swept = False

    def _committed(self, task: asyncio.Task[None]) -> None:
        self._commits.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("the local tier could not keep a fetched model: %s", task.exception())

    async def aclose(self) -> None:
        """Let background commits finish, so the next start finds the model in the tier.

        They are bounded by the disk (an fsync of what was just written), so they are awaited,
        not cancelled.
        """
        if self._commits:
            await asyncio.gather(*self._commits, return_exceptions=True)

    @staticmethod
    def is_remote(config: ModelConfig) -> bool:
        """Whether the model's files are elsewhere (``s3://``, ``hf://``) and must be pulled."""
        return bool(config.source and is_remote(config.source))

    async def localize(self, config: ModelConfig) -> Localized:
        """The config with a local ``source``, the seconds each phase took, and a release hook
        to call once the model no longer uses its files (until then the tier keeps them)."""
        if not self.is_remote(config):
            return Localized(config, {}, _nothing)
        from weight_cache import LocalTier, pull

        assert config.source is not None
        source = parse_source(config.source)
        if not source.needs_tier:  # the Hugging Face cache is its tier
            log.info(
                "model %s: resolving %s through the Hugging Face cache", config.name, config.source
            )
            report = await pull(source, None)
            local = config.model_copy(update={"source": str(report.path)})
            return Localized(local, {"fetch": report.fetch_s}, _nothing)
        mark = time.perf_counter()
        sink = _tensor_sink(config)  # imports torch: its own phase, not the fetch's
        imports_s = time.perf_counter() - mark
        started = time.perf_counter()
        tier = LocalTier(self.cache_dir, budget_bytes=self.budget_bytes)
        progress = _Progress(config.name, config.source)
        reporting: asyncio.Future[None] | None = None

        def planned(manifest: Manifest) -> None:  # the progress's total, before any byte
            nonlocal reporting
            progress.total = manifest.total_bytes
            reporting = asyncio.ensure_future(progress.report_every(PROGRESS_EVERY_S))

        try:
            report = await pull(
                source,
                tier,
                sink=sink,
                progress=progress.add,
                planned=planned,
                concurrency=self.concurrency,
                chunk_bytes=self.chunk_bytes,
                commit_in_background=True,  # load from the page cache as the disk catches up
                hold=True,  # no process evicts the files while this one serves them
            )
        finally:
            if reporting is not None:
                reporting.cancel()
            if sink is not None:
                await asyncio.to_thread(sink.close)  # the last device copies complete
        if report.committed is not None:
            self._commits.add(report.committed)
            report.committed.add_done_callback(self._committed)
        if not self._swept:
            # once per process, off the cold start's path: the half-filled entries a killed
            # replica left behind (entries being filled hold their lock and are skipped)
            self._swept = True
            sweep = asyncio.ensure_future(asyncio.to_thread(_sweep, tier))
            self._commits.add(sweep)
            sweep.add_done_callback(self._committed)
        phases = {"imports": imports_s, "plan": report.plan_s, "fetch": report.fetch_s}
        phases["tier"] = time.perf_counter() - started - report.plan_s - report.fetch_s
        tensors: StreamedTensors | None = None
        if sink is not None and sink.tensors:
            # both overlap the fetch: the time spent making tensors, and waiting for the device
            phases["materialise"] = sink.materialise_s
            phases["device"] = sink.device_wait_s
            tensors = sink.tensors
        local = config.model_copy(update={"source": str(report.path)})
        return Localized(local, phases, report.release, tensors)


PROGRESS_EVERY_S = 5.0  # a fetch longer than this says how far it is, this often


class _Progress:
    """A fetch's bytes so far, logged every few seconds while it lasts (behind ``ember up``
    the activator shows these lines too): a cold start is never minutes of silence."""

    def __init__(self, model: str, source: str) -> None:
        self.model, self.source = model, source
        self.done = 0
        self.total = 0
        self.started = time.perf_counter()

    def add(self, n: int) -> None:
        self.done += n

    async def report_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            elapsed = time.perf_counter() - self.started
            share = f" ({self.done / self.total:.0%})" if self.total else ""
            log.info(
                "model %s: fetching %s: %.1f of %.1f MB%s in %.0fs, %.1f MB/s",
                self.model,
                self.source,
                self.done / 1e6,
                self.total / 1e6,
                share,
                elapsed,
                self.done / 1e6 / elapsed if elapsed > 0 else 0.0,
            )


def _tensor_sink(config: ModelConfig) -> TensorSink | None:
    """For the handlers that take them (``takes_tensors``): tensors made during the download."""
    from runtime.handlers.base import handler_class, pick_device

    if config.engine == "command" or not handler_class(config.handler_name).takes_tensors:
        return None
    from weight_cache import TensorSink

    return TensorSink(pick_device(config.device))


def _sweep(tier: LocalTier) -> None:
    removed = tier.clean_stale()
    if removed:
        log.info(
            "removed %d half-filled tier entr%s left by a stopped process",
            removed,
            "y" if removed == 1 else "ies",
        )
