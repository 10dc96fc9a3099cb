"""How a generation's end becomes an answer: a failure is a 500, one cut short by a sleep or an
unload a 503 to retry (never a 200 with truncated text); and how it starts: on the model awake
when its sequence is submitted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.types import Message

from runtime.config import ModelConfig
from runtime.dataplane import DataPlane
from runtime.errors import ModelNotReady, RuntimeServerError
from runtime.facade import RuntimeFacade
from runtime.generation.routes import _EventStream, _failure, _Last, _raise_failed, _start
from runtime.generation.streams import Finished, TextGenerator
from runtime.metrics import RuntimeMetrics
from runtime.repository import ModelRepository, ModelState
from runtime.sleep import SleepLevel
from tests.unit.runtime.test_repository_sleep import Sources


def test_a_finished_generation_is_no_error() -> None:
    for reason in ("stop", "length"):
        _raise_failed(Finished(reason, 3, 4, None))


def test_a_generation_cut_short_is_a_503_to_retry() -> None:
    with pytest.raises(ModelNotReady, match="cut short") as caught:
        _raise_failed(Finished("abort", 3, 1, None))
    assert caught.value.status_code == 503
    assert "cut short" in _failure(Finished("abort", 3, 1, None))


def test_a_failed_generation_is_a_500_saying_why() -> None:
    with pytest.raises(RuntimeServerError, match="generation failed: boom") as caught:
        _raise_failed(Finished("error", 3, 1, "boom"))
    assert caught.value.status_code == 500


async def test_a_model_put_to_sleep_before_the_submit_is_woken_again_for_it(
    tiny_llm_dir: Path,
) -> None:
    """A request took the model awake, then, while its prompt was tokenized, a switch under the
    budget put it to sleep: the sequence is submitted to the model woken again (it was a 503)."""
    config = ModelConfig(
        name="tiny-llm", handler="text-generation", source=str(tiny_llm_dir), device="cpu"
    )
    metrics = RuntimeMetrics()
    repo = ModelRepository([config], metrics, Sources())  # type: ignore[arg-type]
    models = RuntimeFacade(DataPlane(repo, metrics), repo)
    await repo.load_all()
    taken: list[ModelState] = []

    async def awake() -> TextGenerator:
        model = await models.text_generator("tiny-llm")
        taken.append(repo.entry("tiny-llm").state)
        if len(taken) == 1:
            await repo.sleep("tiny-llm", SleepLevel.HOST)
        return model

    try:
        stream = await _start(awake, "Hello, world", {"max_tokens": 5, "temperature": 0})
        _, end = await stream.collect()
        assert (end.reason, end.completion_tokens) == ("length", 5)
        assert taken == [ModelState.READY, ModelState.READY]  # woken for the submit
        assert repo.entry("tiny-llm").stats.as_dict()["sleep_stats"]["host"]["wake"]["count"] == 1
    finally:
        await repo.aclose()


async def test_a_streams_last_event_is_sent_with_the_end_of_the_body() -> None:
    """In one write (uvicorn frames a body message and the end together): a proxy relaying the
    stream reads the end with the event its client stops at, not after the client left."""

    async def events() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield _Last(b"data: [DONE]\n\n")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await _EventStream(events()).stream_response(send)
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [
        (b"data: 1\n\n", True),
        (b"data: [DONE]\n\n", False),
    ]
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
