"""The scheduler with a recording handler, on a real event loop (no HTTP)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from contracts.stats import ModelStats
from runtime.batching import Paused, Scheduler, Unloaded
from runtime.config import ModelConfig, TensorSpec
from runtime.errors import InferenceFailed, InvalidInput, ServerOverloaded
from runtime.metrics import RuntimeMetrics
from runtime.tensors import Tensor


class Doubler:
    """Doubles its input; records batch sizes; can be told to block or to reject a value."""

    platform = "test"
    inputs = (TensorSpec(name="x", datatype="FP32", shape=(2,)),)
    outputs = (TensorSpec(name="y", datatype="FP32", shape=(2,)),)

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.entered = 0  # predict calls begun (a closed gate holds them there)
        self.gate = threading.Event()
        self.gate.set()

    def load(self) -> None:
        pass

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        self.entered += 1
        self.gate.wait(10)
        x = inputs["x"].array
        if (x < 0).any():
            raise InvalidInput("negative values are not allowed")
        if (x > 1e6).any():
            raise RuntimeError("model exploded")
        self.batches.append(x.shape[0])
        return {"y": Tensor("y", "FP32", x * 2)}

    def warmup_inputs(self) -> dict[str, Tensor] | None:
        return None

    def unload(self) -> None:
        pass


def config(**kw: Any) -> ModelConfig:
    return ModelConfig(name="m", handler="torch-module", **kw)


def request(value: float, items: int = 1) -> dict[str, Tensor]:
    return {"x": Tensor("x", "FP32", np.full((items, 2), value, dtype=np.float32))}


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
        await asyncio.sleep(0.005)


async def started(cfg: ModelConfig, handler: Doubler) -> Scheduler:
    scheduler = Scheduler(
        config=cfg, handler=handler, stats=ModelStats("m", "1"), metrics=RuntimeMetrics()
    )
    scheduler.start()
    return scheduler


async def test_requests_arriving_together_share_a_batch_and_get_their_own_rows() -> None:
    handler = Doubler()
    scheduler = await started(config(max_batch_size=16, max_queue_delay_ms=50), handler)
    results = await asyncio.gather(*(scheduler.submit(request(i, items=2)) for i in range(5)))
    for i, out in enumerate(results):
        assert out["y"].array.tolist() == [[2.0 * i] * 2] * 2
    assert handler.batches == [10]
    await scheduler.aclose()


async def test_batches_never_exceed_max_batch_size() -> None:
    handler = Doubler()
    scheduler = await started(config(max_batch_size=4, max_queue_delay_ms=20), handler)
    await asyncio.gather(*(scheduler.submit(request(1, items=3)) for _ in range(4)))
    assert max(handler.batches) <= 4 and sum(handler.batches) == 12
    await scheduler.aclose()


async def test_preferred_size_is_sent_without_waiting_out_the_delay() -> None:
    handler = Doubler()
    scheduler = await started(
        config(max_batch_size=8, preferred_batch_size=(2,), max_queue_delay_ms=5000), handler
    )
    begin = time.monotonic()
    await asyncio.gather(scheduler.submit(request(1)), scheduler.submit(request(2)))
    assert time.monotonic() - begin < 2.0
    assert handler.batches == [2]
    await scheduler.aclose()


async def test_a_lone_request_waits_at_most_the_queue_delay() -> None:
    handler = Doubler()
    scheduler = await started(config(max_batch_size=8, max_queue_delay_ms=30), handler)
    begin = time.monotonic()
    await scheduler.submit(request(1))
    assert 0.025 <= time.monotonic() - begin < 2.0
    await scheduler.aclose()


async def test_full_queue_answers_overloaded_and_loses_nothing_else() -> None:
    handler = Doubler()
    handler.gate.clear()  # the model is busy: requests pile up
    scheduler = await started(config(max_batch_size=1, max_queue_size=2), handler)
    first = asyncio.create_task(scheduler.submit(request(1)))
    await until(lambda: handler.entered == 1, "the first request to run")
    assert scheduler.depth == 0  # first is running; the queue is empty again
    queued = [asyncio.create_task(scheduler.submit(request(i))) for i in (2, 3)]
    await until(lambda: scheduler.depth == 2, "two queued requests")
    with pytest.raises(ServerOverloaded, match="queue is full"):
        await scheduler.submit(request(4))
    handler.gate.set()
    outs = await asyncio.gather(first, *queued)
    assert [o["y"].array[0, 0] for o in outs] == [2.0, 4.0, 6.0]
    await scheduler.aclose()


async def test_one_bad_request_does_not_fail_its_batch_mates() -> None:
    handler = Doubler()
    scheduler = await started(config(max_batch_size=8, max_queue_delay_ms=50), handler)
    results = await asyncio.gather(
        scheduler.submit(request(1)),
        scheduler.submit(request(-1)),
        scheduler.submit(request(3)),
        return_exceptions=True,
    )
    assert results[0]["y"].array[0, 0] == 2.0  # type: ignore[index]
    assert isinstance(results[1], InvalidInput)
    assert results[2]["y"].array[0, 0] == 6.0  # type: ignore[index]
    await scheduler.aclose()


async def test_model_crash_is_a_500_for_that_batch_only() -> None:
    handler = Doubler()
    scheduler = await started(config(max_batch_size=0), handler)
    with pytest.raises(InferenceFailed, match="model exploded"):
        await scheduler.submit(request(1e7))
    assert (await scheduler.submit(request(1)))["y"].array[0, 0] == 2.0
    await scheduler.aclose()


async def test_a_model_crash_is_logged_once_at_error_with_its_traceback_and_request_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Doubler()
    handler.gate.clear()  # the first request holds the model while two more queue up together
    scheduler = await started(config(max_batch_size=8, max_queue_delay_ms=50), handler)
    first = asyncio.create_task(scheduler.submit(request(1), request_id="ok-1"))
    await until(lambda: handler.entered == 1, "the first batch to start")
    crashes = [
        asyncio.create_task(scheduler.submit(request(1e7), request_id=f"boom-{i}"))
        for i in range(2)
    ]
    await until(lambda: scheduler.depth == 2, "both to queue")
    caplog.set_level("DEBUG", logger="ember.runtime")
    handler.gate.set()
    await first
    for crash in crashes:
        with pytest.raises(InferenceFailed):
            await crash
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    record = errors[0]
    message = record.getMessage()
    assert "model 'm'" in message and "2 item(s) from 2 request(s)" in message
    assert "boom-0" in message and "boom-1" in message
    assert record.exc_info is not None
    text = caplog.text
    assert "RuntimeError: model exploded" in text  # the model's own exception, chained
    assert "in predict" in text  # and where it was raised
    await scheduler.aclose()


async def test_a_callers_mistake_is_logged_at_debug_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheduler = await started(config(max_batch_size=0), Doubler())
    caplog.set_level("DEBUG", logger="ember.runtime")
    with pytest.raises(InvalidInput):
        await scheduler.submit(request(-1), request_id="bad")
    levels = {r.levelname for r in caplog.records if "bad" in r.getMessage()}
    assert levels == {"DEBUG"}
    await scheduler.aclose()


async def test_a_crash_while_the_culprit_of_a_bad_batch_is_sought_fails_that_request_only() -> None:
    handler = Doubler()
    handler.gate.clear()
    scheduler = await started(config(max_batch_size=8, max_queue_delay_ms=50), handler)
    first = asyncio.create_task(scheduler.submit(request(1)))
    await until(lambda: handler.entered == 1, "the first batch to start")
    rest = [asyncio.create_task(scheduler.submit(request(v))) for v in (-1, 1e7, 3)]
    await until(lambda: scheduler.depth == 3, "all three to queue")
    handler.gate.set()
    await first
    bad, crashed, good = await asyncio.gather(*rest, return_exceptions=True)
    assert isinstance(bad, InvalidInput)  # the batch's 400: each is run alone
    assert isinstance(crashed, InferenceFailed) and "model exploded" in crashed.message
    assert good["y"].array[0, 0] == 6.0  # type: ignore[index]
    await scheduler.aclose()


async def test_shapes_that_differ_go_to_different_batches() -> None:
    handler = Doubler()
    scheduler = await started(config(max_batch_size=8, max_queue_delay_ms=30), handler)
    odd = {"x": Tensor("x", "FP32", np.ones((1, 3), dtype=np.float32))}
    a, b = await asyncio.gather(scheduler.submit(request(1)), scheduler.submit(odd))
    assert a["y"].array.shape == (1, 2) and b["y"].array.shape == (1, 3)
    assert sorted(handler.batches) == [1, 1]
    await scheduler.aclose()


async def test_drain_waits_for_running_work_and_close_fails_the_rest() -> None:
    handler = Doubler()
    handler.gate.clear()
    scheduler = await started(config(max_batch_size=1), handler)
    running = asyncio.create_task(scheduler.submit(request(1)))
    await until(lambda: handler.entered == 1, "the request to run")
    threading.Timer(0.1, handler.gate.set).start()  # the work ends while drain() waits for it
    await scheduler.drain(5)
    assert running.done() and (await running)["y"].array[0, 0] == 2.0
    await scheduler.aclose()
    with pytest.raises(Unloaded):
        await scheduler.submit(request(1))


async def _gathering(scheduler: Scheduler) -> asyncio.Task[Any]:
    """A request out of the queue, waiting out its batch delay for company."""
    waiting = asyncio.create_task(scheduler.submit(request(1)))
    await until(lambda: scheduler.gathering == 1, "the request to be gathered")
    assert scheduler.depth == 1  # it still waits
    return waiting


async def test_a_request_waiting_out_its_delay_is_running_work_for_drain() -> None:
    handler = Doubler()
    scheduler = await started(config(max_batch_size=4, max_queue_delay_ms=60_000), handler)
    first = await _gathering(scheduler)
    assert not await scheduler.drain(0.05)  # it is not idle: a batch is being gathered
    rest = [asyncio.create_task(scheduler.submit(request(i))) for i in (2, 3, 4)]  # fills it
    assert await scheduler.drain(5)
    assert (await first)["y"].array[0, 0] == 2.0
    assert [(await r)["y"].array[0, 0] for r in rest] == [4.0, 6.0, 8.0]
    assert handler.batches == [4]
    await scheduler.aclose()


async def test_close_answers_a_request_waiting_out_its_delay_at_once() -> None:
    handler = Doubler()
    scheduler = await started(config(max_batch_size=4, max_queue_delay_ms=60_000), handler)
    waiting = await _gathering(scheduler)
    await asyncio.wait_for(scheduler.aclose(), 5)  # does not wait out the 60 s
    with pytest.raises(Unloaded, match="unloaded") as caught:
        await asyncio.wait_for(waiting, 1)
    assert caught.value.status_code == 503 and caught.value.headers["Retry-After"]
    assert handler.batches == []


async def test_a_pause_runs_what_was_admitted_then_admits_nothing_until_resumed() -> None:
    handler = Doubler()
    scheduler = await started(config(max_batch_size=4, max_queue_delay_ms=200), handler)
    waiting = await _gathering(scheduler)
    pausing = asyncio.create_task(scheduler.pause(10))
    await until(lambda: waiting.done(), "the gathered request to run out its delay")
    assert await pausing
    assert (await waiting)["y"].array[0, 0] == 2.0
    with pytest.raises(Paused) as caught:
        await scheduler.submit(request(2))
    assert caught.value.status_code == 503
    assert handler.batches == [1] and scheduler.idle
    scheduler.resume()
    assert (await scheduler.submit(request(2)))["y"].array[0, 0] == 4.0
    await scheduler.aclose()


async def test_a_pause_that_times_out_leaves_the_scheduler_admitting() -> None:
    handler = Doubler()
    handler.gate.clear()
    scheduler = await started(config(max_batch_size=1), handler)
    running = asyncio.create_task(scheduler.submit(request(1)))
    await until(lambda: handler.entered == 1, "the request to run")
    assert not await scheduler.pause(0.05)
    handler.gate.set()
    assert (await running)["y"].array[0, 0] == 2.0
    assert (await scheduler.submit(request(3)))["y"].array[0, 0] == 6.0
    await scheduler.aclose()


async def test_a_forward_pass_whose_caller_left_still_counts_as_running() -> None:
    handler = Doubler()
    handler.gate.clear()
    scheduler = await started(config(max_batch_size=1), handler)  # no delay: runs at once
    caller = asyncio.create_task(scheduler.submit(request(1)))
    await until(lambda: handler.entered == 1, "the forward pass to begin")
    caller.cancel()  # the request's own task goes; its thread computes on
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not scheduler.idle
    assert not await scheduler.pause(0.05)  # a sleep now would take the weights from under it
    handler.gate.set()
    assert await scheduler.pause(5) and scheduler.idle
    await scheduler.aclose()
