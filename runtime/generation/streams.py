"""What a generation route sees: a sequence's events, and the model as a ``TextGenerator``.

Torch-free: the engine (:mod:`runtime.generation.engine`) emits these events from its thread;
:class:`GenerationStream` carries them onto the event loop and aborts the sequence when its
consumer stops reading (a client that left, an error), so the engine frees it at its next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from runtime.generation.params import SamplingParams


@dataclass(frozen=True)
class Delta:
    """New text of a sequence (``tokens``: how many tokens it has generated so far)."""

    text: str
    tokens: int


@dataclass(frozen=True)
class Finished:
    """A sequence's end: ``reason`` is ``stop`` (EOS or a stop string), ``length``
    (``max_tokens`` or the model's length), ``abort`` or ``error`` (``error`` says why)."""

    reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


Event = Delta | Finished
Emit = Callable[[Event], None]


class Abortable(Protocol):
    def abort(self) -> None: ...


class Engine(Protocol):
    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    def submit(self, prompt: list[int], params: SamplingParams, emit: Emit) -> Abortable: ...


class TextGenerator(Protocol):
    """A text-generation model's handler, as the routes use it."""

    max_model_len: int

    def generator(self) -> Engine: ...

    def encode_prompt(self, text: str) -> list[int]: ...

    def chat_prompt(self, messages: list[dict[str, str]]) -> str: ...


class GenerationStream:
    """One sequence's events on the event loop. Submitted when made (so a full queue is an
    error before any response starts); closing it aborts the sequence if it still runs."""

    def __init__(self, engine: Engine, prompt: list[int], params: SamplingParams) -> None:
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._sequence = engine.submit(prompt, params, self._emit)
        self.prompt_tokens = len(prompt)

    def _emit(self, event: Event) -> None:  # in the engine's thread
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is left to read it
            self._sequence.abort()

    async def events(self) -> AsyncIterator[Event]:
        """Every event up to and including the ``Finished`` one."""
        try:
            while True:
                event = await self._events.get()
                yield event
                if isinstance(event, Finished):
                    return
        finally:  # the consumer left (cancelled, closed): the engine drops it at its next step
            self._sequence.abort()

    async def collect(self) -> tuple[str, Finished]:
        """The whole text and its end."""
        parts = []
        async for event in self.events():
            if isinstance(event, Delta):
                parts.append(event.text)
            else:
                return "".join(parts), event
        raise AssertionError("a generation ends with Finished")
