"""The step-loop engine on the tiny Llama: greedy equals transformers' generate, sequences join
and leave mid-batch, aborts free their cache, the waiting queue is bounded, several sequences
decode in one forward, prefill is chunked, the KV cache is bounded, tokens and latencies are
recorded."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from runtime.config import ModelConfig
from runtime.errors import InvalidInput, ServerOverloaded
from runtime.generation.engine import Engine
from runtime.generation.params import SamplingParams
from runtime.generation.stats import GenerationStats
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


def test_drain_waits_for_the_sequences_to_end_as_they_would(
    handler: TextGenerationHandler,
) -> None:
    engine = handler.generator()
    assert engine.drain(0)  # nothing runs: at once
    c = Collector()
    prompt = handler.encode_prompt(PROMPTS[0])
    seq = engine.submit(prompt, SamplingParams(200, 0.0), c)
    assert c.first.wait(60)
    assert not engine.drain(0.01)  # it still runs: the timeout passes, nothing is cut
    assert engine.running == 1 and not seq.aborted
    assert engine.drain(60)
    assert engine.running == 0
    _, end = c.result()
    assert (end.reason, end.completion_tokens) == ("length", 200)


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
    # a waiting client that left holds no place: another is taken in its stead
    gone = Collector()
    waiting[0].abort()
    waiting[0] = engine.submit(prompt, SamplingParams(4, 0.0), gone)
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


class RecordingModel:
    """The model, its forward calls' batch sizes recorded; the first call waits for ``go``."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = model.config
        self.forward = model.forward  # what the engine reads its signature off
        self.batches: list[tuple[int, int]] = []  # (batch, tokens) per forward
        self.go = threading.Event()

    def __call__(self, **kwargs: Any) -> Any:
        self.go.wait(60)
        self.batches.append(tuple(kwargs["input_ids"].shape))
        return self.model(**kwargs)


def _engine(handler: TextGenerationHandler, model: Any, **bounds: Any) -> Engine:
    options = {"max_running": 4, "max_waiting": 8, **bounds}
    return Engine(
        model,
        handler.tokenizer,
        device="cpu",
        max_model_len=handler.max_model_len,
        eos_token_ids=handler.generator().eos_token_ids,
        **options,
    )


def _eventually(condition: Any, timeout: float = 30.0) -> None:
    """Wait for ``condition()`` (state the engine's thread sets after it emits)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def _generate(reference: Any, prompt: list[int], n: int, eos: frozenset[int]) -> list[int]:
    out = reference.generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None
    )
    theirs: list[int] = out[0, len(prompt) :].tolist()
    cut = next((i for i, t in enumerate(theirs) if t in eos), len(theirs))
    return theirs[:cut]


def test_sequences_of_different_lengths_decode_in_one_forward(
    handler: TextGenerationHandler, reference: Any
) -> None:
    model = RecordingModel(handler.module)
    engine = _engine(handler, model)
    try:
        prompts = [handler.encode_prompt(t) for t in PROMPTS]
        assert len({len(p) for p in prompts}) > 1  # different lengths: padding is exercised
        done = [Collector() for _ in prompts]
        seqs = [engine.submit(prompts[0], SamplingParams(20, 0.0), done[0])]
        for prompt, c in zip(prompts[1:], done[1:], strict=True):
            seqs.append(engine.submit(prompt, SamplingParams(20, 0.0), c))
        model.go.set()  # the first was held in its prefill until all four were queued
        for c in done:
            c.result()
    finally:
        engine.close()
    assert (4, 1) in model.batches  # the four decoded in one forward pass
    # the new prompts went in together: the first alone at most (if the engine took it before
    # the others were queued), the rest in one forward
    prefills = [batch for batch, tokens in model.batches if tokens > 1]
    assert sum(prefills) == len(prompts) and len(prefills) <= 2
    eos = engine.eos_token_ids
    for prompt, seq in zip(prompts, seqs, strict=True):
        assert seq.generated == _generate(reference, prompt, 20, eos)


def test_new_prompts_prefill_together_within_the_budget_padding_counted(
    handler: TextGenerationHandler, reference: Any
) -> None:
    model = RecordingModel(handler.module)
    engine = _engine(handler, model, prefill_chunk=16)
    try:
        long = handler.encode_prompt(" ".join(PROMPTS))[:12]
        short = [handler.encode_prompt(t)[:2] for t in PROMPTS[:3]]
        done = [Collector() for _ in range(4)]
        seqs = [
            engine.submit(p, SamplingParams(6, 0.0), c)
            for p, c in zip([long, *short], done, strict=True)
        ]
        model.go.set()
        for c in done:
            c.result()
    finally:
        engine.close()
    prefills = [(b, t) for b, t in model.batches if t > 1]
    assert all(b * t <= 16 for b, t in prefills), prefills  # padding counts against the budget
    assert (3, 2) in prefills  # the short ones went in together, not padded to the long one
    eos = engine.eos_token_ids
    for prompt, seq in zip([long, *short], seqs, strict=True):
        assert seq.generated == _generate(reference, prompt, 6, eos)


def test_a_long_prompt_is_prefilled_in_chunks(
    handler: TextGenerationHandler, reference: Any
) -> None:
    model = RecordingModel(handler.module)
    model.go.set()
    engine = _engine(handler, model, prefill_chunk=4)
    try:
        prompt = handler.encode_prompt(" ".join(PROMPTS))
        assert len(prompt) > 8
        c = Collector()
        seq = engine.submit(prompt, SamplingParams(12, 0.0), c)
        c.result()
    finally:
        engine.close()
    whole, rest = divmod(len(prompt), 4)
    prefill = [4] * whole + ([rest] if rest else [])
    assert [tokens for _, tokens in model.batches[: len(prefill)]] == prefill  # 4 per step
    assert all(tokens == 1 for _, tokens in model.batches[len(prefill) :])
    assert seq.generated == _generate(reference, prompt, 12, engine.eos_token_ids)


def test_the_kv_cache_bound_queues_then_refuses(handler: TextGenerationHandler) -> None:
    prompt = handler.encode_prompt(PROMPTS[0])
    engine = _engine(handler, handler.module, max_kv_tokens=len(prompt) + 40)
    try:
        with pytest.raises(InvalidInput, match="max_kv_tokens"):
            engine.submit(prompt, SamplingParams(41, 0.0), Collector())
        first, second = Collector(), Collector()
        running = engine.submit(prompt, SamplingParams(40, 0.0), first)
        assert first.first.wait(60)
        engine.submit(prompt, SamplingParams(4, 0.0), second)
        # the second waits while the first holds the whole cache, then runs
        _eventually(lambda: 0 < engine.kv_usage <= 1)
        assert engine.waiting == 1
        assert not second.first.is_set()
        running.abort()
        assert first.result()[1].reason == "abort"
        assert second.result()[1].reason in ("length", "stop")
        _eventually(lambda: engine.kv_used == 0)
    finally:
        engine.close()


def test_the_engine_records_tokens_and_latencies(handler: TextGenerationHandler) -> None:
    stats = GenerationStats()
    engine = _engine(handler, handler.module, stats=stats)
    try:
        prompt = handler.encode_prompt(PROMPTS[2])
        c = Collector()
        seq = engine.submit(prompt, SamplingParams(6, 0.0), c)
        _, end = c.result()
    finally:
        engine.close()
    picked = len(seq.generated) + (end.reason == "stop")  # an end-of-sequence token counts
    drained = stats.drain()
    assert drained.prompt_tokens == stats.prompt_tokens == len(prompt)
    assert drained.generation_tokens == stats.generation_tokens == picked
    assert len(drained.ttft) == 1 and len(drained.itl) == picked - 1
    assert all(s >= 0 for s in [*drained.ttft, *drained.itl])
    again = stats.drain()  # drained: what the next scrape adds is new
    assert (again.prompt_tokens, again.generation_tokens, again.ttft) == (0, 0, [])
    assert stats.generation_tokens == picked  # the totals stay


def test_a_cache_the_batch_cannot_cut_decodes_each_sequence_alone(
    handler: TextGenerationHandler, reference: Any
) -> None:
    assert handler.generator().batched  # the tiny Llama's layers are full attention
    model = RecordingModel(handler.module)
    engine = _engine(handler, model)
    engine.batched = False  # as for a sliding-window model
    try:
        prompts = [handler.encode_prompt(t) for t in PROMPTS[:2]]
        done = [Collector(), Collector()]
        seqs = [
            engine.submit(p, SamplingParams(8, 0.0), c) for p, c in zip(prompts, done, strict=True)
        ]
        model.go.set()
        for c in done:
            c.result()
    finally:
        engine.close()
    assert all(batch == 1 for batch, _ in model.batches)
    for prompt, seq in zip(prompts, seqs, strict=True):
        assert seq.generated == _generate(reference, prompt, 8, engine.eos_token_ids)
