"""Scheduling requests onto a model: dynamic batching with Triton's knobs, or one by one.

``max_batch_size`` caps the items in a batch; ``preferred_batch_size`` lists sizes worth sending
at once; ``max_queue_delay_ms`` is how long the first request of a batch may wait for company;
``max_queue_size`` bounds the waiting requests (past it: 503 with ``Retry-After``). Handlers run in
a thread pool of ``instance_count`` workers, so the event loop never blocks on a forward pass, and
a batch forms while the previous one computes.

A batch that fails with the caller's mistake (400) is re-run request by request, so one bad request
does not fail the others that happened to share its batch.

A batch is running from the moment its first request leaves the queue: while the scheduler waits
out ``max_queue_delay_ms`` for company, :meth:`Scheduler.drain` still waits for it, and
:meth:`Scheduler.close` answers it. Sleep and wake go through the scheduler too:
:meth:`Scheduler.pause` admits nothing more and returns once what was admitted has run, and the
scheduler runs nothing until :meth:`Scheduler.resume`, so a model's weights are never put away
under a batch, whatever the timing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from contracts.stats import ModelStats
from runtime.config import ModelConfig
from runtime.errors import (
    InferenceFailed,
    InvalidInput,
    ModelNotReady,
    RuntimeServerError,
    ServerOverloaded,
)
from runtime.handlers.base import ModelHandler
from runtime.metrics import RuntimeMetrics
from runtime.tensors import Tensor

Predict = Callable[[dict[str, Tensor]], dict[str, Tensor]]

log = logging.getLogger("ember.runtime")


@dataclass(slots=True)
class _Pending:
    inputs: dict[str, Tensor]
    items: int
    future: asyncio.Future[dict[str, Tensor]]
    enqueued_ns: int
    key: tuple[Any, ...] = field(default=())
    started_ns: int = 0
    arrived_ns: int | None = None  # began to wait before it was enqueued (a model's wake)
    request_id: str | None = None  # the request's ``id``, named when its batch fails


class Paused(ModelNotReady):
    """The scheduler was paused (its model is going to sleep or asleep): nothing is admitted
    until it is resumed. Retryable: the caller wakes the model and submits again."""


class Unloaded(ModelNotReady):
    """The model was unloaded while the request waited; retryable (another replica, or after a
    load)."""


def _batch_key(inputs: dict[str, Tensor]) -> tuple[Any, ...]:
    """Requests can share a batch when their tensors agree on everything but the batch size."""
    return tuple((t.name, t.datatype, t.array.shape[1:]) for t in inputs.values())


class Scheduler:
    """Queues requests for one model and runs them, batched when the model allows it."""

    def __init__(
        self,
        *,
        config: ModelConfig,
        handler: ModelHandler,
        stats: ModelStats,
        metrics: RuntimeMetrics,
    ) -> None:
        self._config = config
        self._predict: Predict = handler.predict
        self._stats = stats
        self._batch_metric = metrics.batch_size.labels(config.name)
        self._depth_metric = metrics.queue_depth.labels(config.name)
        self._executor = ThreadPoolExecutor(
            max_workers=config.instance_count, thread_name_prefix=f"ember-{config.name}"
        )
        self._slots = asyncio.Semaphore(config.instance_count)
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever a batch finishes
        self._running: set[asyncio.Task[Any]] = set()
        # forward passes in the worker threads: a batch's task may end (its caller cancelled)
        # while its thread still computes, and the weights are in use until the thread is done
        self._computing: set[concurrent.futures.Future[dict[str, Tensor]]] = set()
        # the batch being gathered: out of the queue, not yet running; drain waits for it and
        # close answers it
        self._collecting: list[_Pending] = []
        self._paused = False
        self._loop_task: asyncio.Task[None] | None = None
        self._batching = config.max_batch_size > 0
        self._preferred = frozenset(config.preferred_batch_size)
        self._delay_ns = int(config.max_queue_delay_ms * 1_000_000)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name=f"scheduler-{self._config.name}")

    @property
    def depth(self) -> int:
        """Requests waiting: queued, or gathered into a batch that waits out its delay."""
        return len(self._queue) + len(self._collecting)

    @property
    def gathering(self) -> int:
        """Requests out of the queue in a batch that waits out its delay for company."""
        return len(self._collecting)

    async def submit(
        self,
        inputs: dict[str, Tensor],
        *,
        arrived_ns: int | None = None,
        request_id: str | None = None,
    ) -> dict[str, Tensor]:
        """Run one request; returns its outputs, sliced out of the batch it ran in.

        ``arrived_ns`` (``perf_counter_ns``) is when it began to wait, if before now (a wake):
        its queue time counts from there. The batching delay still counts from now.
        """
        if self._loop_task is None or self._loop_task.done():
            raise Unloaded(f"model '{self._config.name}' is not accepting requests")
        if self._paused:
            raise Paused(f"model '{self._config.name}' is going to sleep")
        cap = self._config.max_queue_size
        if cap and len(self._queue) >= cap:
            raise ServerOverloaded(
                f"model '{self._config.name}' queue is full ({cap} requests waiting)"
            )
        items = 1
        if self._batching:
            first = next(iter(inputs.values()))
            items = first.array.shape[0]
        pending = _Pending(
            inputs=inputs,
            items=items,
            future=asyncio.get_running_loop().create_future(),
            enqueued_ns=time.perf_counter_ns(),
            key=_batch_key(inputs) if self._batching else (),
            arrived_ns=arrived_ns,
            request_id=request_id,
        )
        if self._can_run_at_once():
            # Nothing waits and nothing would be waited for: run in the caller's task, sparing
            # the hand-off to the scheduler's task. Same result the batcher would produce.
            await self._slots.acquire()
            task = asyncio.current_task()
            if task is not None:
                self._running.add(task)
            await self._execute([pending])
            return pending.future.result()
        self._queue.append(pending)
        self._depth_metric.set(self.depth)
        self._wakeup.set()
        return await pending.future

    def _can_run_at_once(self) -> bool:
        return not self._queue and not self._slots.locked() and self._delay_ns == 0

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            self._collecting = [self._queue.popleft()]
            if self._batching:
                await self._collect(self._collecting)
            batch = [p for p in self._collecting if not p.future.done()]  # callers that gave up
            self._collecting = []
            self._depth_metric.set(self.depth)
            if not batch:
                self._slots.release()
                self._progress.set()
                continue
            self._running.add(asyncio.create_task(self._execute(batch)))

    async def _collect(self, batch: list[_Pending]) -> None:
        """Gather requests that may share a batch with ``batch[0]`` (already out of the queue)
        into ``batch``, until it is full, of a preferred size, or the delay is out."""
        first = batch[0]
        items = first.items
        limit = self._config.max_batch_size
        deadline = first.enqueued_ns + self._delay_ns
        while items < limit:
            while self._queue:
                head = self._queue[0]
                if head.key != first.key or items + head.items > limit:
                    return  # the head starts the next batch
                batch.append(self._queue.popleft())
                items += head.items
            if items >= limit or items in self._preferred:
                break
            remaining = deadline - time.perf_counter_ns()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining / 1e9)
            except TimeoutError:
                break

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            await self._run_batch(batch)
        except RuntimeServerError as exc:
            if isinstance(exc, InvalidInput) and len(batch) > 1:
                for pending in batch:  # find the culprit; the others still get answers
                    try:
                        await self._run_batch([pending])
                    except RuntimeServerError as single:
                        self._report(single, [pending])
                        _fail(pending, single)
                    except Exception as crash:  # the model raised on this one alone
                        error = self._crashed(crash)
                        self._report(error, [pending])
                        _fail(pending, error)
            else:
                self._report(exc, batch)
                for pending in batch:
                    _fail(pending, exc)
        except Exception as exc:
            error = self._crashed(exc)
            self._report(error, batch)
            for pending in batch:
                _fail(pending, error)
        finally:
            self._slots.release()
            task = asyncio.current_task()
            if task is not None:
                self._running.discard(task)
            self._progress.set()

    def _crashed(self, exc: Exception) -> InferenceFailed:
        """The model's own exception as the 500 its requests get (the exception its cause)."""
        error = InferenceFailed(f"model '{self._config.name}' failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    def _report(self, exc: RuntimeServerError, batch: list[_Pending]) -> None:
        """Log a failed batch once: the model's or the server's fault at ERROR with its
        traceback (the model's own exception included), the caller's mistake at DEBUG."""
        ids = [p.request_id for p in batch if p.request_id]
        level = logging.ERROR if isinstance(exc, InferenceFailed) else logging.DEBUG
        log.log(
            level,
            "model '%s' failed a batch of %d item(s) from %d request(s)%s: %s",
            self._config.name,
            sum(p.items for p in batch),
            len(batch),
            f" (ids: {', '.join(ids)})" if ids else "",
            exc.message,
            exc_info=exc if level == logging.ERROR else None,
        )

    async def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter_ns()
        for pending in batch:
            if not pending.started_ns:
                pending.started_ns = started
                waited_from = pending.arrived_ns or pending.enqueued_ns
                self._stats.queue.add(started - waited_from)
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: Tensor(
                    name, t.datatype, np.concatenate([p.inputs[name].array for p in batch])
                )
                for name, t in batch[0].inputs.items()
            }
        t_input = time.perf_counter_ns()
        outputs = await self._compute(inputs)
        t_infer = time.perf_counter_ns()
        items = sum(p.items for p in batch)
        if len(batch) == 1:
            _resolve(batch[0], outputs)
        else:
            offset = 0
            for name, out in outputs.items():
                if out.array.ndim == 0 or out.array.shape[0] != items:
                    raise InferenceFailed(
                        f"model '{self._config.name}' returned output '{name}' with shape "
                        f"{list(out.array.shape)} for a batch of {items}"
                    )
            for pending in batch:
                end = offset + pending.items
                _resolve(
                    pending,
                    {n: Tensor(n, o.datatype, o.array[offset:end]) for n, o in outputs.items()},
                )
                offset = end
        done = time.perf_counter_ns()
        self._stats.record_batch(
            size=items,
            requests=len(batch),
            input_ns=t_input - started,
            infer_ns=t_infer - t_input,
            output_ns=done - t_infer,
        )
        self._batch_metric.observe(items)

    async def _compute(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """``predict`` in a worker thread, counted as running until the thread is done with it,
        even if the awaiting task is cancelled first."""
        loop = asyncio.get_running_loop()
        work = self._executor.submit(self._predict, inputs)
        self._computing.add(work)
        work.add_done_callback(partial(_call_soon, loop, self._computed))
        return await asyncio.wrap_future(work)

    def _computed(self, work: concurrent.futures.Future[dict[str, Tensor]]) -> None:
        self._computing.discard(work)
        self._progress.set()

    @property
    def idle(self) -> bool:
        """Nothing is queued, being gathered into a batch, or running (its forward pass
        included)."""
        return not (self._queue or self._collecting or self._running or self._computing)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued, gathered or running; False if the timeout passed first
        (work is still queued or running)."""
        deadline = time.monotonic() + timeout_s
        while not self.idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    async def pause(self, timeout_s: float) -> bool:
        """Admit nothing more (a submit raises :class:`Paused`) and wait until what was admitted
        has run: then nothing runs until :meth:`resume`. False, and not paused, if the timeout
        passed first."""
        self._paused = True
        if await self.drain(timeout_s):
            return True
        self._paused = False
        return False

    def resume(self) -> None:
        """Admit requests again (the model is awake)."""
        self._paused = False

    async def aclose(self) -> None:
        """Answer every request not yet running (gathered or queued) with a retryable 503 at
        once, wait for the running batches, and stop."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        unloaded = Unloaded(f"model '{self._config.name}' unloaded")
        for pending in self._collecting:
            _fail(pending, unloaded)
        self._collecting = []
        while self._queue:
            _fail(self._queue.popleft(), unloaded)
        self._depth_metric.set(0)
        if self._running:
            # wait, never cancel: a running batch may be a request's own task (run at once)
            await asyncio.wait(self._running)
        if self._computing:  # a cancelled caller's forward pass: the handler is still in use
            await asyncio.wait([asyncio.wrap_future(w) for w in self._computing])
        self._executor.shutdown(wait=False)

    async def run_now(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run outside the queue (warm-up), still off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._predict, inputs)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """``callback(*args)`` on ``loop``, from any thread; nothing if the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _resolve(pending: _Pending, outputs: dict[str, Tensor]) -> None:
    if not pending.future.done():
        pending.future.set_result(outputs)


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)
