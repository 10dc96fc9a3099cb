"""What a text-generation model's engines measured, kept across their lives (an engine is
replaced when the model sleeps and wakes) and read by ``/metrics`` and the statistics endpoint.

The engine's thread records; a scrape drains the latency observations (time to first token,
inter-token latency) into the histograms, and reads the token totals. Torch-free.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Drained:
    """What happened since the last drain."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    ttft: list[float] = field(default_factory=list)  # seconds, one per sequence
    itl: list[float] = field(default_factory=list)  # seconds, one per token after the first


class GenerationStats:
    """Thread-safe token totals and pending latency observations of one model."""

    # the pending observations are capped so a model nobody scrapes cannot grow without bound
    MAX_PENDING = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = Drained()
        self.prompt_tokens = 0  # since load
        self.generation_tokens = 0

    def prompt(self, tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += tokens
            self._pending.prompt_tokens += tokens

    def token(self, *, ttft: float | None = None, itl: float | None = None) -> None:
        with self._lock:
            self.generation_tokens += 1
            self._pending.generation_tokens += 1
            if ttft is not None and len(self._pending.ttft) < self.MAX_PENDING:
                self._pending.ttft.append(ttft)
            if itl is not None and len(self._pending.itl) < self.MAX_PENDING:
                self._pending.itl.append(itl)

    def drain(self) -> Drained:
        with self._lock:
            drained, self._pending = self._pending, Drained()
        return drained
