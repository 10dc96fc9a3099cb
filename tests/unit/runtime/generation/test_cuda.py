"""On a CUDA device: the tiny Llama's sequences decode together equal to transformers'
generate, and the model sleeps at host and disk and wakes to the same text."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
import torch

from runtime.config import ModelConfig
from runtime.generation.params import SamplingParams
from runtime.generation.streams import Event, Finished
from runtime.handlers.text_generation import TextGenerationHandler
from runtime.sleep import SleepLevel
from tests.skipgate import GPU_SKIP

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=GPU_SKIP)

PROMPTS = ["Hello, world", "The quick brown fox", "Ember is", "Tokens stream to the client"]


def _together(handler: TextGenerationHandler, n: int) -> list[list[int]]:
    """Every prompt submitted at once (so they share decode steps); their greedy tokens."""
    ends: queue.SimpleQueue[Event] = queue.SimpleQueue()
    seqs = [
        handler.generator().submit(handler.encode_prompt(t), SamplingParams(n, 0.0), ends.put)
        for t in PROMPTS
    ]
    finished = 0
    while finished < len(seqs):
        finished += isinstance(ends.get(timeout=120), Finished)
    return [list(s.generated) for s in seqs]


def test_batched_greedy_and_sleep_on_cuda(tiny_llm_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    config = ModelConfig(
        name="tiny-llm", handler="text-generation", source=str(tiny_llm_dir), device="cuda"
    )
    handler = TextGenerationHandler(config)
    handler.load()
    try:
        ours = _together(handler, 16)
        reference = AutoModelForCausalLM.from_pretrained(tiny_llm_dir).to("cuda")
        eos = handler.generator().eos_token_ids
        for prompt_text, tokens in zip(PROMPTS, ours, strict=True):
            prompt = handler.encode_prompt(prompt_text)
            out = reference.generate(
                torch.tensor([prompt], device="cuda"),
                max_new_tokens=16,
                do_sample=False,
                eos_token_id=None,
            )
            theirs = out[0, len(prompt) :].tolist()
            cut = next((i for i, t in enumerate(theirs) if t in eos), len(theirs))
            assert tokens == theirs[:cut], prompt_text
        for level in (SleepLevel.HOST, SleepLevel.DISK):
            handler.sleep(level)
            assert handler.device_bytes() == 0
            handler.wake()
            assert _together(handler, 16) == ours
    finally:
        handler.unload()
