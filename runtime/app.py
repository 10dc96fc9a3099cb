"""The runtime's application factory: the lifespan owns the repository and its loading task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from contracts.replica import ModelStatus
from runtime import __version__
from runtime.budget import DeviceBudget, detect_limit
from runtime.config import ModelConfig, ServerSettings
from runtime.dataplane import DataPlane
from runtime.errors import ConfigError
from runtime.facade import RuntimeFacade
from runtime.generation.embeddings import EmbeddingEndpoints, register_embedding_endpoints
from runtime.generation.routes import GenerationEndpoints, register_generation_endpoints
from runtime.handlers.base import handler_class
from runtime.metrics import RuntimeMetrics
from runtime.repository import ModelRepository
from runtime.rest import (
    V2Endpoints,
    register_error_handlers,
    register_metrics_endpoint,
    register_v2_endpoints,
)
from runtime.sources import WeightSources

log = logging.getLogger("ember.runtime")


def create_app(
    settings: ServerSettings,
    configs: list[ModelConfig],
    *,
    on_status: Callable[[ModelStatus], None] | None = None,
) -> FastAPI:
    """Build the v2 app for these models. Nothing loads until the app's lifespan starts.

    ``on_status`` is told every change of a model's state (the server's status channel).
    """
    metrics = RuntimeMetrics()
    sources = WeightSources(
        cache_dir=settings.cache_dir.expanduser(),
        budget_bytes=settings.cache_budget_bytes,
        concurrency=settings.fetch_concurrency,
        chunk_bytes=settings.fetch_chunk_bytes,
    )
    budget = DeviceBudget(
        settings.device_memory_budget_bytes,
        metrics=metrics,
        host_limit=settings.host_memory_budget_bytes,
    )
    repository = ModelRepository(configs, metrics, sources, on_status=on_status, budget=budget)

    async def start() -> None:
        if settings.device_memory_budget_bytes is None:
            budget.set_limit(await asyncio.to_thread(_default_budget, configs))
        if settings.load_on_demand:  # once the budget is known: the first request loads each
            repository.defer_loading()
        else:
            await repository.load_all()

    dataplane = DataPlane(repository, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading runs beside the server: /v2/health/live answers from the first moment.
        loading = None
        if settings.load_on_start:
            if not settings.load_on_demand:  # at once: the budget is read first (imports torch)
                repository.announce_loading()
            loading = asyncio.create_task(start())
        try:
            yield
        finally:
            dataplane.draining = True
            if loading is not None:
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            await repository.drain(settings.grace_period_s)
            await repository.aclose()
            await sources.aclose()

    app = FastAPI(
        title="Ember runtime",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # `/infer/` is a 404 in the OIP shape, not a bodiless 307
    )
    models = RuntimeFacade(dataplane, repository)
    register_error_handlers(app)
    v2 = V2Endpoints(models, max_request_bytes=settings.max_request_bytes)
    register_v2_endpoints(app, v2)
    register_metrics_endpoint(app, models)
    register_generation_endpoints(app, GenerationEndpoints(models, v2.read_body))
    register_embedding_endpoints(app, EmbeddingEndpoints(models, v2.read_body))
    return app


def _default_budget(configs: list[ModelConfig]) -> int | None:
    """The device memory budget when none is given: read from the devices of the models whose
    handlers measure their footprints (blocking: it imports their handlers, and may torch)."""
    devices = []
    for config in configs:
        try:
            measures = handler_class(config.handler_name).measures
        except ConfigError:
            continue  # its load fails saying why
        if measures:
            devices.append(config.device)
    return detect_limit(devices)
