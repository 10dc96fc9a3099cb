"""The metadata book: declared metadata known at once; the rest learned once from a replica."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from activator.metadata import MetadataBook
from activator.tasks import TaskSet
from tests.fixtures.frontdoor import METADATA, until
from tests.fixtures.specs import model_spec

ANSWER = {**METADATA.as_json(), "name": "u", "properties": {"max_length": "256"}}


class Fetch:
    """Answers each GET with ``answer`` (an exception: raised), once ``gate`` is set."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.urls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, url: str, model: str) -> Any:
        self.urls.append(f"{url}/v2/models/{model}")
        await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def book(fetch: Fetch, tasks: TaskSet) -> MetadataBook:
    specs = {"d": model_spec(name="d", metadata=METADATA), "u": model_spec(name="u")}
    return MetadataBook(specs, tasks, fetch=fetch)


async def test_declared_metadata_is_known_and_never_fetched() -> None:
    fetch = Fetch(ANSWER)
    async with TaskSet() as tasks:
        b = book(fetch, tasks)
        assert b.get("d") == METADATA and not b.knows("u")
        b.replica_ready("d", "http://r1")
        assert fetch.urls == []


async def test_undeclared_metadata_is_learned_once_from_a_ready_replica() -> None:
    fetch = Fetch(ANSWER)
    fetch.gate.clear()
    async with TaskSet() as tasks:
        b = book(fetch, tasks)
        b.replica_ready("u", "http://r1")
        b.replica_ready("u", "http://r2")  # a second replica while the first GET is out
        await until(lambda: len(fetch.urls) == 1, "the GET")
        fetch.gate.set()
        await until(lambda: b.knows("u"), "the metadata learned")
        b.replica_ready("u", "http://r3")
        assert fetch.urls == ["http://r1/v2/models/u"]
        got = b.get("u")
        assert got is not None and got.as_json() == ANSWER


@pytest.mark.parametrize("answer", [{"path": "/v2/models/u"}, ValueError("GET answered 404")])
async def test_a_bad_answer_is_not_kept_and_the_next_replica_is_asked(
    answer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fetch = Fetch(answer)
    async with TaskSet() as tasks:
        b = book(fetch, tasks)
        b.replica_ready("u", "http://r1")
        await until(lambda: "could not learn" in caplog.text, "the warning")
        assert not b.knows("u")
        fetch.answer = ANSWER
        b.replica_ready("u", "http://r2")
        await until(lambda: b.knows("u"), "the metadata learned from the next replica")
        assert fetch.urls == ["http://r1/v2/models/u", "http://r2/v2/models/u"]
