"""A text-generation model sleeps at host and disk (its engine stopped, KV caches given back)
and, woken, generates the same greedy text."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
import torch

from runtime.config import ModelConfig
from runtime.errors import ModelNotReady
from runtime.generation.params import SamplingParams
from runtime.generation.streams import Delta, Event, Finished
from runtime.handlers.text_generation import TextGenerationHandler
from runtime.sleep import SleepLevel

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
