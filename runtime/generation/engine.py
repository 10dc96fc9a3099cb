"""The generation engine: a step loop in its own thread that sequences join and leave at
every step.

Why our own scheduler and not transformers 5's ``ContinuousBatchingManager``
(``generate_batch``): on this project's 2-core CPU it took 40 s to generate 2 x 10 tokens of a
64-wide, 2-layer Llama that ``generate`` answers in milliseconds (its paged cache and attention
are sized and written for CUDA). A replica on a CPU must serve too, so the loop is ours. A step:

1. drops the sequences whose client left (``abort``), freeing their KV cache;
2. admits waiting sequences while fewer than ``max_running`` run and the KV-cache bound
   (``max_kv_tokens``) holds what each may need: its prompt plus the tokens it may generate,
   reserved at admission so a running sequence never runs out of cache;
3. prefills: at most ``prefill_chunk`` prompt tokens go through the model per step, a long
   prompt over several steps (chunked prefill), so it does not stall the running streams; the
   new sequences whose whole prompts fit go through in one forward, left-padded as a decode
   step's batch is (eight requests arriving together wait for one prefill, not eight);
4. decodes: every sequence whose prompt is in picks its next token, then ONE forward pass
   computes all their next logits. Each sequence keeps its own ``DynamicCache``; for the step
   they are left-padded into one batched cache, with an attention mask hiding the padding and
   position ids saying each sequence's own position, and each sequence's part is cut back out
   afterwards. The matrix multiplies are shared; the copy into the padded batch is the price of
   per-sequence caches (a paged cache with its own attention kernel is the next step).

A model whose cache has other than full-attention layers (a sliding window) decodes each
sequence alone, as before. A sequence alone in its step runs on its own cache without padding,
exactly as ``generate`` does, so greedy decoding equals ``model.generate(do_sample=False)``
token for token; batched, the padding is masked out and the logits agree to float rounding.

The waiting queue is bounded: :meth:`Engine.submit` refuses past ``max_waiting`` (503 with
Retry-After), and a sequence that could never fit the KV-cache bound is a 400 there.

Outputs reach the caller through the sequence's ``emit`` callback, called in the engine's
thread: text deltas (held back while they could be the start of a stop string or end in an
unfinished UTF-8 character), then one final event with the finish reason and token counts.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime.errors import InvalidInput, ServerOverloaded, ShuttingDown
from runtime.generation.params import SamplingParams
from runtime.generation.stats import GenerationStats
from runtime.generation.streams import Delta, Emit, Event, Finished

log = logging.getLogger("ember.runtime")


@dataclass(eq=False)
class Sequence:
    """One request's generation, owned by the engine's thread once submitted."""

    prompt: list[int]
    params: SamplingParams
    emit: Emit
    reserved: int = 0  # KV-cache tokens it may need: prompt + completion
    generated: list[int] = field(default_factory=list)
    aborted: bool = False
    cache: Any = None
    prefilled: int = 0  # prompt tokens in its cache
    next_logits: torch.Tensor | None = None
    sent_chars: int = 0
    generator: torch.Generator | None = None
    submitted: float = field(default_factory=time.monotonic)
    last_token_at: float | None = None

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
        prefill_chunk: int = 512,
        max_kv_tokens: int | None = None,
        stats: GenerationStats | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.prefill_chunk = prefill_chunk
        self.max_kv_tokens = max_kv_tokens or max_running * max_model_len
        self.stats = stats or GenerationStats()
        self.batched = _full_attention(model.config)  # else each sequence decodes alone
        # a prefill wants only its last position's logits (as generate asks for them)
        self._last_logits = {"logits_to_keep": 1} if _keeps_logits(model) else {}
        self.kv_reserved = 0  # tokens reserved by the running sequences
        self.kv_used = 0  # tokens in their caches, as of the last step
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        lock = threading.Lock()
        self._wake = threading.Condition(lock)  # a sequence submitted, or the engine closed
        self._idle = threading.Condition(lock)  # the loop found nothing to run
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

    @property
    def kv_usage(self) -> float:
        """The fraction of the KV-cache bound the running sequences' caches hold (0 to 1)."""
        return min(1.0, self.kv_used / self.max_kv_tokens)

    def submit(self, prompt: list[int], params: SamplingParams, emit: Emit) -> Sequence:
        """Queue a sequence; ServerOverloaded when ``max_waiting`` are already waiting,
        InvalidInput when it could never fit the KV-cache bound."""
        room = max(self.max_model_len - len(prompt), 0)
        seq = Sequence(
            prompt=list(prompt),
            params=params,
            emit=emit,
            reserved=len(prompt) + min(params.max_tokens, room),
        )
        if seq.reserved > self.max_kv_tokens:
            raise InvalidInput(
                f"this request may need {seq.reserved} tokens of KV cache (its prompt and "
                f"max_tokens); the model holds at most {self.max_kv_tokens} (max_kv_tokens): "
                "ask for fewer tokens"
            )
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        with self._wake:
            if self._closed:
                raise ShuttingDown()
            waiting = sum(not s.aborted for s in self._waiting)  # the clients still there
            if waiting >= self.max_waiting:
                raise ServerOverloaded(
                    f"{waiting} sequences are waiting already (max_waiting); retry later"
                )
            self._waiting.append(seq)
            self._wake.notify()
        return seq

    def drain(self, timeout_s: float) -> bool:
        """Wait until no sequence runs or waits (blocking): True once none does, False if
        ``timeout_s`` passed first. What a sleep waits for before it closes the engine, so the
        streams in flight end as they would have (a sequence submitted meanwhile is waited for
        too)."""
        with self._wake:
            return self._idle.wait_for(
                lambda: self._closed or not (self._waiting or self._running), timeout_s
            )

    def close(self) -> None:
        """Stop the loop; every sequence still there ends with ``abort``, its cache freed."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            self._idle.notify_all()
        self._thread.join()

    # ----------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._running:
                    self._idle.notify_all()
                    self._wake.wait()
                if self._closed:
                    leftover = [*self._running, *self._waiting]
                    self._running = []
                    self._waiting.clear()
                    break
                self._admit()
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as exc:  # the model failed: every sequence it held fails
                log.exception("a generation step failed")
                for seq in self._running:
                    self._finish(seq, "error", error=f"{type(exc).__name__}: {exc}")
                self._running = []
                self._account()
        for seq in leftover:
            self._finish(seq, "abort")
        self._account()

    def _admit(self) -> None:
        """Waiting sequences join, first come first served, while the bounds hold (under the
        lock). A waiting sequence whose client left goes first, so it holds no place in the
        bounded queue."""
        if any(s.aborted for s in self._waiting):
            for seq in [s for s in self._waiting if s.aborted]:
                self._finish(seq, "abort")
            self._waiting = deque(s for s in self._waiting if not s.aborted)
        while self._waiting and len(self._running) < self.max_running:
            seq = self._waiting[0]
            if not seq.aborted and self.kv_reserved + seq.reserved > self.max_kv_tokens:
                return  # it waits until running sequences give their cache back
            self._waiting.popleft()
            self._running.append(seq)
            self.kv_reserved += seq.reserved

    def _step(self) -> None:
        self._running = [s for s in self._running if not self._dropped(s)]
        self._prefill()
        decoding = [s for s in self._running if s.next_logits is not None]
        going = [s for s in decoding if self._take(s)]
        if going:
            self._decode(going)
        ended = {id(s) for s in decoding} - {id(s) for s in going}
        self._running = [s for s in self._running if id(s) not in ended]
        self._account()

    def _account(self) -> None:
        self.kv_reserved = sum(s.reserved for s in self._running)
        self.kv_used = sum(s.prefilled + len(s.generated) for s in self._running)

    def _dropped(self, seq: Sequence) -> bool:
        if seq.aborted:
            self._finish(seq, "abort")
            return True
        return False

    def _prefill(self) -> None:
        """Up to ``prefill_chunk`` prompt tokens through the model, oldest sequence first: the
        new sequences whose whole prompts fit go through together, in one forward (their padded
        batch, sequences x the longest prompt, within the budget); a prompt longer than what is
        left of the budget goes in alone, in chunks, over several steps."""
        alone = 0  # prompt tokens prefilled one sequence at a time this step
        together = 0  # the padded batch of new prompts: len(fresh) x the longest of them
        fresh: list[Sequence] = []
        longest = 0
        for seq in self._running:
            budget = self.prefill_chunk - alone - together
            if budget <= 0:
                break
            left = len(seq.prompt) - seq.prefilled
            if left <= 0:
                continue
            if self.batched and seq.prefilled == 0:
                padded = (len(fresh) + 1) * max(longest, left)
                if alone + padded <= self.prefill_chunk:
                    fresh.append(seq)
                    longest, together = max(longest, left), padded
                    continue
                if fresh:  # it waits for the next step rather than pad this one past the budget
                    continue
            chunk = seq.prompt[seq.prefilled : seq.prefilled + budget]
            self._prefill_alone(seq, chunk)
            alone += len(chunk)
        if len(fresh) == 1:
            self._prefill_alone(fresh[0], fresh[0].prompt)
        elif fresh:
            self._prefill_together(fresh)

    def _prefill_alone(self, seq: Sequence, chunk: list[int]) -> None:
        from transformers import DynamicCache

        if seq.cache is None:
            seq.cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([chunk], device=self.device)
        out = self.model(input_ids=ids, cache=seq.cache, use_cache=True, **self._last_logits)
        seq.prefilled += len(chunk)
        if seq.prefilled == len(seq.prompt):
            seq.next_logits = out.logits[0, -1]
            self.stats.prompt(len(seq.prompt))

    def _prefill_together(self, seqs: list[Sequence]) -> None:
        """Whole prompts of new sequences in one forward: left-padded, the padding masked out
        and each prompt's positions its own; each sequence's part of the batch's cache is cut
        out into its own (as after a batched decode step)."""
        from transformers import DynamicCache

        lengths = [len(s.prompt) for s in seqs]
        longest = max(lengths)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor(
            [[pad] * (longest - n) + s.prompt for s, n in zip(seqs, lengths, strict=True)],
            device=self.device,
        )
        mask = torch.zeros((len(seqs), longest), dtype=torch.long, device=self.device)
        positions = torch.zeros((len(seqs), longest), dtype=torch.long, device=self.device)
        for i, n in enumerate(lengths):
            mask[i, longest - n :] = 1
            positions[i, longest - n :] = torch.arange(n, device=self.device)
        batch: Any = DynamicCache(config=self.model.config)  # full-attention layers (batched)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=batch,
            use_cache=True,
            **self._last_logits,
        )
        for i, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
            seq.cache = DynamicCache(config=self.model.config)
            for index, keys, values in _rows(batch, i, longest - n):
                seq.cache.update(keys, values, index)
            seq.prefilled = n
            seq.next_logits = out.logits[i, -1]
            self.stats.prompt(n)

    def _decode(self, seqs: list[Sequence]) -> None:
        """One forward pass for the last token of every sequence in ``seqs``."""
        if len(seqs) == 1 or not self.batched:  # alone on its cache, as generate runs it
            for seq in seqs:
                ids = torch.tensor([[seq.generated[-1]]], device=self.device)
                out = self.model(input_ids=ids, cache=seq.cache, use_cache=True)
                seq.next_logits = out.logits[0, -1]
            return
        batch, lengths = self._padded(seqs)
        longest = max(lengths)
        ids = torch.tensor([[s.generated[-1]] for s in seqs], device=self.device)
        mask = torch.zeros((len(seqs), longest + 1), dtype=torch.long, device=self.device)
        for i, n in enumerate(lengths):
            mask[i, longest - n :] = 1
        positions = torch.tensor([[n] for n in lengths], device=self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=batch,
            use_cache=True,
        )
        for i, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
            seq.next_logits = out.logits[i, -1]
            for index, keys, values in _rows(batch, i, longest - n):  # into its own, in place
                layer = seq.cache.layers[index]
                layer.keys, layer.values = keys, values

    def _padded(self, seqs: list[Sequence]) -> tuple[Any, list[int]]:
        """The sequences' caches left-padded into one batched ``DynamicCache``."""
        from transformers import DynamicCache

        batch = DynamicCache(config=self.model.config)
        lengths = [s.cache.get_seq_length() for s in seqs]
        longest = max(lengths)
        for layer in range(len(seqs[0].cache.layers)):
            keys, values = [], []
            for seq, n in zip(seqs, lengths, strict=True):
                k, v = seq.cache.layers[layer].keys, seq.cache.layers[layer].values
                pad = (0, 0, longest - n, 0)  # left, along the sequence axis
                keys.append(torch.nn.functional.pad(k, pad))
                values.append(torch.nn.functional.pad(v, pad))
            batch.update(torch.cat(keys), torch.cat(values), layer)
        return batch, lengths

    def _take(self, seq: Sequence) -> bool:
        """Pick its next token, send what text is safe to send; False once it is done."""
        assert seq.next_logits is not None
        token = self._pick(seq, seq.next_logits)
        now = time.monotonic()
        if seq.last_token_at is None:
            self.stats.token(ttft=now - seq.submitted)
        else:
            self.stats.token(itl=now - seq.last_token_at)
        seq.last_token_at = now
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


def _rows(batch: Any, row: int, pad: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per layer, sequence ``row``'s keys and values out of a left-padded batched cache, its
    ``pad`` leading positions dropped (after a batched prefill or decode step)."""
    for index, layer in enumerate(batch.layers):
        yield (
            index,
            layer.keys[row : row + 1, :, pad:].clone(),
            layer.values[row : row + 1, :, pad:].clone(),
        )


def _keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do)."""
    forward = getattr(model, "forward", None)
    try:
        return forward is not None and "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def _full_attention(config: Any) -> bool:
    """Whether every layer of the model's cache is a plain full-attention one, whose keys and
    values the padded batch can be cut from (a sliding window's could not, as written)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


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
