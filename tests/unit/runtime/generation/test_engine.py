"""The step-loop engine on the tiny Llama: greedy equals transformers' generate, sequences join
and leave mid-batch, aborts free their cache, the waiting queue is bounded."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from runtime.config import ModelConfig
from runtime.errors import ServerOverloaded
from runtime.generation.params import SamplingParams
from runtime.generation.streams import Delta, Event, Finished
from runtime.handlers.text_generation import TextGenerationHandler

torch.set_num_threads(1)

PROMPTS = ["Hello, world", "The quick brown fox", "Ember is", "Tokens stream to the client"]


@pytest.fixture(scope="module")
def handler(tiny_llm_dir: Path) -> Iterator[TextGenerationHandler]:
    config = ModelConfig(
        name="tiny-llm",
        handler="text-generation",
        source=str(tiny_llm_dir),
        device="cpu",
        options={"max_running": 3, "max_waiting": 2},
    )
    h = TextGenerationHandler(config)
    h.load()
    yield h
    h.unload()


@pytest.fixture(scope="module")
def reference(tiny_llm_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llm_dir)


class Collector:
    def __init__(self) -> None:
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.first = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.put(event)
        self.first.set()

    def result(self) -> tuple[str, Finished]:
        parts = []
        while True:
            event = self.events.get(timeout=60)
            if isinstance(event, Delta):
                parts.append(event.text)
            else:
                return "".join(parts), event


def _greedy_ids(handler: TextGenerationHandler, prompt: list[int], n: int) -> list[int]:
    """The engine's greedy tokens, re-encoded from its text would be lossy: read them back."""
    engine = handler.generator()
    seen: list[int] = []
    done = threading.Event()

    def emit(event: Event) -> None:
        if isinstance(event, Finished):
            done.set()

    seq = engine.submit(prompt, SamplingParams(max_tokens=n, temperature=0.0), emit)
    assert done.wait(60)
    seen = list(seq.generated)
    return seen


def test_greedy_equals_transformers_generate(
    handler: TextGenerationHandler, reference: Any
) -> None:
    for text in PROMPTS:
        prompt = handler.encode_prompt(text)
        ours = _greedy_ids(handler, prompt, 24)
        out = reference.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None
        )
        theirs = out[0, len(prompt) :].tolist()
        eos = handler.generator().eos_token_ids
        cut = next((i for i, t in enumerate(theirs) if t in eos), len(theirs))
        assert ours == theirs[:cut], text


def test_sequences_join_and_leave_mid_batch(handler: TextGenerationHandler) -> None:
    engine = handler.generator()
    alone = {}
    for text in PROMPTS[:3]:
        c = Collector()
        engine.submit(handler.encode_prompt(text), SamplingParams(8, temperature=0.0), c)
        alone[text] = c.result()[0]
    # a long one runs; short ones join while it decodes and leave before it ends
    long = Collector()
    engine.submit(handler.encode_prompt(PROMPTS[3]), SamplingParams(200, temperature=0.0), long)
    assert long.first.wait(60)
    shorts = []
    for text in PROMPTS[:3]:
        c = Collector()
        engine.submit(handler.encode_prompt(text), SamplingParams(8, temperature=0.0), c)
        assert c.first.wait(60)  # running beside the long one
        shorts.append((text, c))
    for text, c in shorts:
        assert c.result()[0] == alone[text]
    _, end = long.result()
    assert end.reason in ("length", "stop")


def test_abort_frees_the_sequence(handler: TextGenerationHandler) -> None:
    engine = handler.generator()
    c = Collector()
    seq = engine.submit(handler.encode_prompt(PROMPTS[0]), SamplingParams(400, 0.0), c)
    assert c.first.wait(60)
    assert engine.running == 1
    seq.abort()
    _, end = c.result()
    assert end.reason == "abort"
    assert seq.cache is None
    assert engine.running == 0


def test_waiting_queue_is_bounded(handler: TextGenerationHandler) -> None:
    engine = handler.generator()
    prompt = handler.encode_prompt(PROMPTS[0])
    running = [Collector() for _ in range(3)]
    seqs = []
    for c in running:  # one at a time: each is running before the next comes
        seqs.append(engine.submit(prompt, SamplingParams(400, 0.0), c))
        assert c.first.wait(60)
    assert engine.running == 3
    waiting = [engine.submit(prompt, SamplingParams(4, 0.0), Collector()) for _ in range(2)]
    with pytest.raises(ServerOverloaded, match="max_waiting"):
        engine.submit(prompt, SamplingParams(4, 0.0), Collector())
    for seq in [*seqs, *waiting]:
        seq.abort()
    for c in running:
        assert c.result()[1].reason == "abort"


def test_stop_string_and_seeded_sampling(handler: TextGenerationHandler) -> None:
    engine = handler.generator()
    prompt = handler.encode_prompt(PROMPTS[1])
    c = Collector()
    engine.submit(prompt, SamplingParams(30, 0.0), c)
    full, _ = c.result()
    assert len(full) > 4
    stop = full[2:4]
    c = Collector()
    engine.submit(prompt, SamplingParams(30, 0.0, stop=(stop, "x" * 200)), c)
    text, end = c.result()
    assert end.reason == "stop" and text == full[: full.find(stop)]
    texts = []
    for _ in range(2):
        c = Collector()
        engine.submit(prompt, SamplingParams(12, 0.9, top_p=0.8, seed=7), c)
        texts.append(c.result()[0])
    assert texts[0] == texts[1]
