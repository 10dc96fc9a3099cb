"""Where a model's files come from: local directories as they are, ``s3://`` through the local tier.

An ``s3://bucket/prefix`` source (pushed with ``ember cache push``) is streamed into the node's
local tier once; every later start, in any process on the node, loads from the tier without
touching S3. The handler then sees a local directory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.config import ModelConfig

log = logging.getLogger("ember.runtime")


@dataclass(frozen=True)
class Localized:
    config: ModelConfig
    phases: dict[str, float]
    release: Callable[[], None]


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
        return bool(config.source and config.source.startswith("s3://"))

    async def localize(self, config: ModelConfig) -> Localized:
        """The config with a local ``source``, the seconds each phase took, and a release hook
        to call once the model no longer uses its files (until then the tier keeps them)."""
        if not self.is_remote(config):
            return Localized(config, {}, _nothing)
        from weight_cache.fetch import fetch_to_tier
        from weight_cache.stores import open_store
        from weight_cache.tier import LocalTier

        assert config.source is not None
        started = time.perf_counter()
        tier = LocalTier(self.cache_dir, budget_bytes=self.budget_bytes)
        store = await open_store(config.source, concurrency=self.concurrency)
        try:
            report = await fetch_to_tier(
                store,
                tier,
                concurrency=self.concurrency,
                chunk_bytes=self.chunk_bytes,
                commit_in_background=True,  # load from the page cache while the disk catches up
                hold=True,  # no process evicts the files while this one serves from them
            )
        finally:
            await store.aclose()
        if report.committed is not None:
            self._commits.add(report.committed)
            report.committed.add_done_callback(self._committed)
        phases = {"plan": report.plan_s, "fetch": report.fetch_s}
        phases["tier"] = time.perf_counter() - started - report.plan_s - report.fetch_s
        local = config.model_copy(update={"source": str(report.path)})
        return Localized(local, phases, report.release)
