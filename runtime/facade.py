"""The one face the REST layer calls: the models of one server, in the protocol's words.

:mod:`runtime.rest` reads requests and writes responses; everything it asks of the models goes
through a :class:`RuntimeFacade`: health, metadata, statistics, the repository extension (index,
load, unload or sleep at a level) and inference. Behind it are the data plane (tensors in and
out, a request checked against the model) and the repository (each model's lifecycle); the REST
layer sees neither, nor any model's entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import generate_latest

from contracts.replica import ModelState
from runtime.dataplane import DataPlane, InferResult
from runtime.entries import SERVING, ModelEntry
from runtime.errors import InvalidInput
from runtime.generation.streams import TextGenerator
from runtime.handlers.base import ModelHandler, handler_class
from runtime.metrics import RuntimeMetrics
from runtime.protocol import InferenceRequest, parse_inference_request
from runtime.repository import ModelRepository
from runtime.sleep import SleepLevel

__all__ = ["InferResult", "RuntimeFacade"]


class RuntimeFacade:
    """The models of one server as the v2 routes see them (no HTTP in here)."""

    def __init__(self, dataplane: DataPlane, repository: ModelRepository) -> None:
        self._dataplane = dataplane
        self._repository = repository

    # ----------------------------------------------------------------------------- health
    def live(self) -> bool:
        return self._dataplane.live()

    def not_ready(self) -> str | None:
        """Why the server is not ready (None: it is)."""
        if self._dataplane.ready():
            return None
        return "draining" if self._dataplane.draining else "models are not ready"

    def model_ready(self, name: str, version: str | None) -> None:
        """ModelNotFound (404) or ModelNotReady (503, saying its state and why) unless the
        model can answer (READY, or SLEEPING: a request wakes it)."""
        self._repository.ready_entry(name, version)

    # ----------------------------------------------------------------------------- metadata
    def server_metadata(self) -> dict[str, Any]:
        return self._dataplane.server_metadata()

    async def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        await self._repository.loaded_entry(name, version)  # its handler says
        return self._dataplane.model_metadata(name, version)

    async def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        await self._repository.loaded_entry(name, version)
        return self._dataplane.model_config(name, version)

    def statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        """The models' statistics; a text-generation model's have its token totals too."""
        statistics = self._dataplane.statistics(name, version)
        for model in statistics["model_stats"]:
            handler = self._repository.entry(model["name"], model.get("version")).handler
            if handler is not None and handler.generates:
                stats = handler.stats  # type: ignore[attr-defined]  # declared by generates
                model["prompt_tokens"] = stats.prompt_tokens
                model["generation_tokens"] = stats.generation_tokens
        return statistics

    def metrics(self) -> bytes:
        """The Prometheus exposition, queue depths read now."""
        metrics = self._dataplane.metrics
        for entry in self._repository.entries():
            depth = entry.scheduler.depth if entry.scheduler else 0
            metrics.queue_depth.labels(entry.config.name).set(depth)
            handler = entry.handler
            if handler is not None and handler.generates:
                _generation_metrics(metrics, entry.config.name, handler)
        return generate_latest(metrics.registry)

    # ----------------------------------------------------------------------------- repository
    def index(self, ready_only: bool) -> list[dict[str, Any]]:
        return self._dataplane.repository_index(ready_only)

    def known(self, name: str) -> None:
        """ModelNotFound (404) unless the repository has the model: said before a body is read."""
        self._repository.entry(name)

    async def load(self, name: str) -> None:
        """Load (or reload, or wake) a model."""
        await self._repository.load(name)

    async def unload(self, name: str, level: SleepLevel | None) -> None:
        """Unload a model, or with a ``level`` put it to sleep there."""
        if level is None:
            await self._repository.unload(name)
        else:
            await self._repository.sleep(name, level)

    # ----------------------------------------------------------------------------- sleep mode
    # vLLM's sleep and wake for ``name``, or every model (None): the repository's own sleep
    async def sleep(self, name: str | None, level: SleepLevel) -> list[str]:
        """Put ``name`` (404 if unknown) or every serving model to sleep at ``level``, one by
        one, as an unload with the level does (after its batches); the names asked."""
        entries = self._named(name, lambda e: e.state in SERVING)
        for entry in entries:
            await self._repository.sleep(entry.config.name, level)
        return [e.config.name for e in entries]

    async def wake(self, name: str | None) -> list[str]:
        """Wake ``name`` or every sleeping model (one loading on demand loads); the names
        asked. A model that cannot serve is a 503 saying why, as for a request."""
        entries = self._named(name, lambda e: e.state is ModelState.SLEEPING)
        for entry in entries:
            await self._repository.awake_entry(entry.config.name)
        return [e.config.name for e in entries]

    def is_sleeping(self, name: str | None) -> bool:
        """Whether ``name``, or any model (there is one to wake), sleeps."""
        return any(e.state is ModelState.SLEEPING for e in self._named(name, lambda e: True))

    def _named(self, name: str | None, wanted: Callable[[ModelEntry], bool]) -> list[ModelEntry]:
        if name is not None:
            return [self._repository.entry(name)]
        return [e for e in self._repository.entries() if wanted(e)]

    # ----------------------------------------------------------------------------- inference
    def can_infer(self, name: str, version: str | None) -> None:
        """404 or 503 before anything of the request is parsed."""
        self._repository.ready_entry(name, version)

    async def raw_request(self, name: str, version: str | None, body: bytes) -> InferenceRequest:
        """A binary request with no JSON header: the model's one input says the shape (the
        model loaded first, if it is not yet)."""
        await self._repository.loaded_entry(name, version)
        return self._dataplane.raw_request(name, version, body)

    async def infer(
        self,
        name: str,
        version: str | None,
        request: InferenceRequest,
        binary: memoryview | None = None,
    ) -> InferResult:
        return await self._dataplane.infer(name, version, request, binary)

    # ----------------------------------------------------------------------------- generation
    def generating_models(self) -> list[str]:
        """The names of the models that generate text (whatever their state)."""
        return [e.config.name for e in self._repository.entries() if _kind(e).generates]

    def openai_models(self) -> list[str]:
        """The names of the models the OpenAI routes serve: text generation and embeddings."""
        return [
            e.config.name
            for e in self._repository.entries()
            if _kind(e).generates or _kind(e).embeds
        ]

    async def embed(self, name: str, texts: list[str]) -> tuple[np.ndarray, int]:
        """An embedding model's (``embeds``: ``hf-encoder``) embeddings of ``texts`` (one row
        each) and how many tokens they took, through the data plane like a v2 request (its
        limits, batching and statistics); 404 for an unknown model, 400 for one that does not
        embed."""
        entry = self._repository.entry(name)
        if not _kind(entry).embeds:
            raise InvalidInput(f"model '{name}' does not make embeddings ({entry.config.handler})")
        entry = await self._repository.loaded_entry(name)
        assert entry.handler is not None
        text_input = entry.handler.inputs[0].name
        request = parse_inference_request(
            {
                "inputs": [
                    {"name": text_input, "shape": [len(texts)], "datatype": "BYTES", "data": texts}
                ]
            }
        )
        result = await self._dataplane.infer(name, None, request)
        array = np.asarray(result.outputs[0][0].array, dtype=np.float32).reshape(len(texts), -1)
        tokens = await asyncio.to_thread(entry.handler.count_tokens, texts)
        return array, tokens

    async def text_generator(self, name: str, version: str | None = None) -> TextGenerator:
        """A text-generation model's handler, awake (woken or loaded first if need be); 404
        for an unknown model, 400 for one that does not generate text."""
        entry = self._repository.entry(name, version)
        if not _kind(entry).generates:
            raise InvalidInput(f"model '{name}' does not generate text ({entry.config.handler})")
        entry = await self._repository.awake_entry(name, version)
        handler = entry.handler
        assert handler is not None and handler.generates
        generator: TextGenerator = handler  # type: ignore[assignment]  # declared by generates
        return generator


def _generation_metrics(metrics: RuntimeMetrics, name: str, handler: Any) -> None:
    """A text-generation model's gauges read now (nothing running while it sleeps); its
    latencies and tokens since the last scrape (its statistics outlive a sleep)."""
    engine = handler.engine
    metrics.generation_running.labels(name).set(0 if engine is None else engine.running)
    metrics.generation_waiting.labels(name).set(0 if engine is None else engine.waiting)
    metrics.kv_cache_usage.labels(name).set(0 if engine is None else engine.kv_usage)
    drained = handler.stats.drain()
    metrics.prompt_tokens.labels(name).inc(drained.prompt_tokens)
    metrics.generation_tokens.labels(name).inc(drained.generation_tokens)
    for seconds in drained.ttft:
        metrics.time_to_first_token.labels(name).observe(seconds)
    for seconds in drained.itl:
        metrics.inter_token_latency.labels(name).observe(seconds)


def _kind(entry: ModelEntry) -> type[ModelHandler]:
    """What a model's handler can do, declared on its class."""
    return handler_class(entry.config.handler_name)
