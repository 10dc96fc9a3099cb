"""Per-model inference statistics in the shape of Triton's statistics extension.

Kept by the predictor (per replica: batches, compute phases) and by the activator (per model,
since it started: requests it relayed, their queueing and the replicas' answer time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Counters updated on the event loop only, so they need no lock."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # items (batch elements) answered successfully
    execution_count: int = 0  # batches run
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    # Ember's extension, kept by a predictor only: sleeps and wakes per sleep level
    sleeps: dict[str, Duration] = field(default_factory=dict)
    wakes: dict[str, Duration] = field(default_factory=dict)

    def record_batch(
        self, *, size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        self.execution_count += 1
        self.compute_input.add(input_ns, requests)
        self.compute_infer.add(infer_ns, requests)
        self.compute_output.add(output_ns, requests)
        batch = self.batches.setdefault(size, BatchStats())
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)

    def record_request(self, *, ok: bool, items: int, total_ns: int) -> None:
        if ok:
            self.success.add(total_ns)
            self.inference_count += items
            self.last_inference_ms = time.time_ns() // 1_000_000
        else:
            self.fail.add(total_ns)

    def record_sleep(self, level: str, ns: int) -> None:
        self.sleeps.setdefault(level, Duration()).add(ns)

    def record_wake(self, level: str, ns: int) -> None:
        self.wakes.setdefault(level, Duration()).add(ns)

    def as_dict(self) -> dict[str, Any]:
        stats = {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
        }
        if self.sleeps or self.wakes:  # absent until a model first sleeps
            stats["sleep_stats"] = {
                level: {
                    "sleep": self.sleeps.get(level, Duration()).as_dict(),
                    "wake": self.wakes.get(level, Duration()).as_dict(),
                }
                for level in sorted(self.sleeps.keys() | self.wakes.keys())
            }
        return stats
