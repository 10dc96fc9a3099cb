"""The generation engine: a step loop in its own thread that sequences join and leave at
every step.

Why our own scheduler and not transformers 5's ``ContinuousBatchingManager``
(``generate_batch``): on this project's 2-core CPU it took 40 s to generate 2 x 10 tokens of a
64-wide, 2-layer Llama that ``generate`` answers in milliseconds (its paged cache and attention
are sized and written for CUDA). A replica on a CPU must serve too, so the loop is ours:

- every step first drops the sequences whose client left (``abort``) or that finished, freeing
  their KV cache, then admits waiting sequences up to ``max_running`` (each prefilled with its
  whole prompt into its own ``DynamicCache``), then decodes one token for every running one;
- each sequence has its own KV cache, so its logits are exactly those ``generate`` computes
  and greedy decoding equals ``model.generate(do_sample=False)`` token for token. The decode
  step runs each sequence's forward in turn: sequences share the step, not one matmul (batching
  them over a padded cache, and chunked prefill, are the next steps);
- the waiting queue is bounded: :meth:`Engine.submit` refuses past ``max_waiting`` (503 with
  Retry-After), never queueing without bound.

Outputs reach the caller through the sequence's ``emit`` callback, called in the engine's
thread: text deltas (held back while they could be the start of a stop string or end in an
unfinished UTF-8 character), then one final event with the finish reason and token counts.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime.errors import ServerOverloaded, ShuttingDown
from runtime.generation.params import SamplingParams
from runtime.generation.streams import Delta, Emit, Event, Finished

log = logging.getLogger("ember.runtime")


@dataclass(eq=False)
class Sequence:
    """One request's generation, owned by the engine's thread once submitted."""

    prompt: list[int]
    params: SamplingParams
    emit: Emit
    generated: list[int] = field(default_factory=list)
    aborted: bool = False
    cache: Any = None
    next_logits: torch.Tensor | None = None
    sent_chars: int = 0
    generator: torch.Generator | None = None

    def abort(self) -> None:
        """Stop it at the next step, its cache freed (any thread may call this)."""
        self.aborted = True


class Engine:
    """The step loop of one causal LM. ``model`` and ``tokenizer`` are transformers'."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str,
        max_running: int,
        max_waiting: int,
        max_model_len: int,
        eos_token_ids: frozenset[int],
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="ember-generate", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------- any thread
    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, prompt: list[int], params: SamplingParams, emit: Emit) -> Sequence:
        """Queue a sequence; ServerOverloaded when ``max_waiting`` are already waiting."""
        seq = Sequence(prompt=list(prompt), params=params, emit=emit)
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        with self._wake:
            if self._closed:
                raise ShuttingDown()
            if len(self._waiting) >= self.max_waiting:
                raise ServerOverloaded(
                    f"{len(self._waiting)} sequences are waiting already (max_waiting); retry later"
                )
            self._waiting.append(seq)
            self._wake.notify()
        return seq

    def close(self) -> None:
        """Stop the loop; every sequence still there ends with ``abort``."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    # ----------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._running:
                    self._wake.wait()
                if self._closed:
                    leftover = [*self._running, *self._waiting]
                    self._running.clear()
                    self._waiting.clear()
                    break
                admitted: list[Sequence] = []
                while self._waiting and len(self._running) + len(admitted) < self.max_running:
                    admitted.append(self._waiting.popleft())
            try:
                with torch.inference_mode():
                    self._step(admitted)
            except Exception as exc:  # the model failed: every sequence it held fails
                log.exception("a generation step failed")
                for seq in [*self._running, *admitted]:
                    self._finish(seq, "error", error=f"{type(exc).__name__}: {exc}")
                self._running = []
        for seq in leftover:
            self._finish(seq, "abort")

    def _step(self, admitted: list[Sequence]) -> None:
        self._running = [s for s in self._running if not self._dropped(s)]
        for seq in admitted:
            if self._dropped(seq):
                continue
            self._prefill(seq)
            self._running.append(seq)
        still = []
        for seq in self._running:
            if self._dropped(seq):
                continue
            if self._advance(seq):
                still.append(seq)
        self._running = still

    def _dropped(self, seq: Sequence) -> bool:
        if seq.aborted:
            self._finish(seq, "abort")
            return True
        return False

    def _prefill(self, seq: Sequence) -> None:
        from transformers import DynamicCache

        seq.cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([seq.prompt], device=self.device)
        out = self.model(input_ids=ids, cache=seq.cache, use_cache=True)
        seq.next_logits = out.logits[0, -1]

    def _advance(self, seq: Sequence) -> bool:
        """Pick its next token, send what text is safe to send; False once it is done."""
        assert seq.next_logits is not None
        token = self._pick(seq, seq.next_logits)
        if token in self.eos_token_ids:
            self._finish(seq, "stop", flush=True)
            return False
        seq.generated.append(token)
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        cut = _first_stop(text, seq.params.stop)
        if cut is not None:
            self._send(seq, text[:cut])
            self._finish(seq, "stop")
            return False
        if len(seq.generated) >= seq.params.max_tokens:
            self._send(seq, text)
            self._finish(seq, "length")
            return False
        if len(seq.prompt) + len(seq.generated) >= self.max_model_len:
            self._send(seq, text)
            self._finish(seq, "length")
            return False
        self._send(seq, text[: len(text) - _held_back(text, seq.params.stop)])
        ids = torch.tensor([[token]], device=self.device)
        out = self.model(input_ids=ids, cache=seq.cache, use_cache=True)
        seq.next_logits = out.logits[0, -1]
        return True

    def _pick(self, seq: Sequence, logits: torch.Tensor) -> int:
        params = seq.params
        if params.greedy:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always)
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=seq.generator).item())

    def _send(self, seq: Sequence, text: str) -> None:
        if len(text) > seq.sent_chars:
            delta = text[seq.sent_chars :]
            seq.sent_chars = len(text)
            self._emit(seq, Delta(delta, len(seq.generated)))

    def _finish(
        self, seq: Sequence, reason: str, *, error: str | None = None, flush: bool = False
    ) -> None:
        if flush and seq.generated:
            self._send(seq, self.tokenizer.decode(seq.generated, skip_special_tokens=True))
        seq.cache = seq.next_logits = None  # its KV cache is freed here
        self._emit(seq, Finished(reason, len(seq.prompt), len(seq.generated), error))

    def _emit(self, seq: Sequence, event: Event) -> None:
        try:
            seq.emit(event)
        except Exception:  # a consumer's failure must not stop the others' sequences
            log.exception("delivering a generation event failed")
            seq.aborted = True


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` must wait: an unfinished UTF-8 character
    (decoded as U+FFFD), or the start of a stop string."""
    held = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    return held
