"""Each model's metadata, kept so that a metadata call never wakes a model.

While no replica of a model is ready, ``GET /v2/models/{m}`` is answered here from what the
activator knows: the metadata its model config declares (:func:`contracts.metadata.
declared_metadata`: torch-module and kserve models with ``inputs`` and ``outputs``), else what a
replica answered once it was ready. That is one ``GET /v2/models/{m}`` to the replica, the first
time one of the model's replicas is ready (and again after one that failed), parsed into a
:class:`~contracts.metadata.ModelMetadata` and kept for the activator's lifetime. Until then
(an hf-encoder model, whose embedding size and input limits are read at load, or one that
declares nothing) a metadata call is relayed like any other request, and so wakes the model:
``ember up`` says so for each such model when it starts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from activator.tasks import TaskSet
from contracts.metadata import ModelMetadata, parse_metadata
from contracts.stack import ModelSpec

log = logging.getLogger("ember.activator")

#: ``fetch(url, model)``: the JSON ``GET {url}/v2/models/{model}`` answers with 200; raises on
#: anything else (:meth:`~activator.replica_client.ReplicaClient.metadata`)
Fetch = Callable[[str, str], Awaitable[Any]]


class MetadataBook:
    """What the activator answers for each model's metadata while no replica does.

    ``fetch`` reads a replica's answer (the activator's replica client's); tests give a fake.
    """

    def __init__(self, specs: Mapping[str, ModelSpec], tasks: TaskSet, fetch: Fetch) -> None:
        self._known: dict[str, ModelMetadata] = {
            name: spec.metadata for name, spec in specs.items() if spec.metadata is not None
        }
        self.declared = frozenset(self._known)
        # a model another server serves (engine: command) has no v2 metadata to learn
        self._foreign = frozenset(n for n, spec in specs.items() if spec.engine == "command")
        self._tasks = tasks
        self._fetch = fetch
        self._learning: set[str] = set()

    def get(self, model: str) -> ModelMetadata | None:
        """The model's metadata, when the activator knows it."""
        return self._known.get(model)

    def knows(self, model: str) -> bool:
        return model in self._known

    def replica_ready(self, model: str, url: str) -> None:
        """A replica of ``model`` answers at ``url``: learn its metadata, once, if not known."""
        if model in self._known or model in self._learning or self._tasks.closed:
            return
        if model in self._foreign:
            return
        self._learning.add(model)
        self._tasks.spawn(self._learn(model, url), name=f"metadata-{model}")

    async def _learn(self, model: str, url: str) -> None:
        try:
            metadata = parse_metadata(await self._fetch(url, model), model)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # relayed until a later replica answers (a metadata call wakes it meanwhile)
            log.warning("model %s: could not learn its metadata from %s: %s", model, url, exc)
            return
        finally:
            self._learning.discard(model)
        self._known[model] = metadata
        log.info("model %s: metadata learned; a metadata call no longer wakes it", model)
