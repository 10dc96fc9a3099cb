"""A text-generation model sleeps at host and disk (its engine stopped, KV caches given back)
and, woken, generates the same greedy text; put to sleep through its repository (a switch under
the device memory budget, the tiered policy, an unload with a level), it waits for the streams
in flight first."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.config import ModelConfig
from runtime.errors import ModelNotReady
from runtime.generation.params import SamplingParams
from runtime.generation.streams import Delta, Event, Finished, GenerationStream
from runtime.handlers.text_generation import TextGenerationHandler
from runtime.metrics import RuntimeMetrics
from runtime.repository import ModelRepository, ModelState
from runtime.sleep import SleepLevel
from runtime.tensors import Tensor
from tests.unit.runtime.test_repository_sleep import Sources

torch.set_num_threads(1)


def _complete(handler: TextGenerationHandler, text: str, n: int) -> tuple[str, Finished]:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    handler.generator().submit(handler.encode_prompt(text), SamplingParams(n, 0.0), events.put)
    parts = []
    while True:
        event = events.get(timeout=60)
        if isinstance(event, Delta):
            parts.append(event.text)
        else:
            return "".join(parts), event


@pytest.mark.parametrize("level", [SleepLevel.HOST, SleepLevel.DISK])
def test_sleep_then_wake_generates_the_same_text(tiny_llm_dir: Path, level: SleepLevel) -> None:
    config = ModelConfig(
        name="tiny-llm", handler="text-generation", source=str(tiny_llm_dir), device="cpu"
    )
    handler = TextGenerationHandler(config)
    assert handler.can_sleep
    handler.load()
    try:
        before, _ = _complete(handler, "The quick brown fox", 16)
        # a sequence still running when the model sleeps ends with abort, its cache freed
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        prompt = handler.encode_prompt("Hello, world")
        running = handler.generator().submit(prompt, SamplingParams(4000, 0.0), events.put)
        assert isinstance(events.get(timeout=60), Delta)  # it runs
        handler.sleep(level)
        assert running.cache is None
        while not isinstance(event := events.get(timeout=60), Finished):
            pass
        assert event.reason == "abort"
        if level is SleepLevel.DISK:
            assert handler.module is not None
            assert all(p.is_meta for p in handler.module.parameters())
        with pytest.raises(ModelNotReady, match="retry"):  # asleep: no engine to submit to
            handler.generator()
        handler.wake()
        after, end = _complete(handler, "The quick brown fox", 16)
        assert after == before and end.reason in ("length", "stop")
    finally:
        handler.unload()


@pytest.fixture
async def repo(tiny_llm_dir: Path) -> AsyncIterator[ModelRepository]:
    """The tiny LLM loaded in a repository, whose sleeps drain what runs first."""
    config = ModelConfig(
        name="tiny-llm", handler="text-generation", source=str(tiny_llm_dir), device="cpu"
    )
    repository = ModelRepository([config], RuntimeMetrics(), Sources())  # type: ignore[arg-type]
    await repository.load_all()
    yield repository
    await repository.aclose()


async def _running(repo: ModelRepository, tokens: int) -> AsyncIterator[Event]:
    """A sequence of ``tokens`` tokens submitted, as a route does; its events, the first read."""
    handler = repo.entry("tiny-llm").handler
    assert isinstance(handler, TextGenerationHandler)
    prompt = handler.encode_prompt("Hello, world")
    stream = GenerationStream(handler.generator(), prompt, SamplingParams(tokens, 0.0))
    events = stream.events()
    assert isinstance(await anext(events), Delta)  # it runs
    return events


async def test_a_sleep_waits_for_the_streams_in_flight_then_puts_the_model_away(
    repo: ModelRepository,
) -> None:
    events = await _running(repo, 300)
    sleep = asyncio.create_task(repo.sleep("tiny-llm", SleepLevel.HOST))
    rest = [event async for event in events]
    end = rest[-1]
    assert isinstance(end, Finished)  # the stream ends as it would have, not cut short
    assert (end.reason, end.completion_tokens) == ("length", 300)
    await sleep
    entry = repo.entry("tiny-llm")
    assert entry.state is ModelState.SLEEPING and entry.asleep is SleepLevel.HOST


async def test_streams_that_outlast_the_drain_timeout_keep_the_model_awake(
    repo: ModelRepository,
) -> None:
    events = await _running(repo, 4000)
    with pytest.raises(ModelNotReady, match=r"busy: its streams did not finish within 0\.05s"):
        await repo.sleep("tiny-llm", SleepLevel.HOST, drain_timeout_s=0.05)
    entry = repo.entry("tiny-llm")
    assert entry.state is ModelState.READY and entry.asleep is None
    assert isinstance(await anext(events), Delta)  # still running
    # the scheduler the refused sleep paused runs again: a v2 infer is answered
    text = Tensor("text_input", "BYTES", np.array([b"Hello"], dtype=object))
    _, outputs = await asyncio.wait_for(repo.infer("tiny-llm", None, {"text_input": text}), 60)
    assert outputs["text_output"].array.shape == (1,)
    await events.aclose()  # its client leaves: the sequence is aborted
    await repo.sleep("tiny-llm", SleepLevel.HOST)  # then nothing runs: it sleeps at once
    assert entry.state is ModelState.SLEEPING
