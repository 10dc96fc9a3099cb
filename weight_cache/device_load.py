"""A local safetensors file onto a device: parallel reads into staging buffers, async copies.

What a model loads from the warm tier when its weights go to a GPU. safetensors'
``load_file(device=...)`` reads through a memory map and copies tensor by tensor from pageable
memory; here ``concurrency`` threads ``pread`` the ranges of a plan
(:func:`~weight_cache.ranges.plan_ranges`) into the slots of a
:class:`~weight_cache.materialize.TensorSink`'s ring of pinned buffers, and each slot is copied
asynchronously into one device buffer for the whole file: the ranged-read pipeline a fetch from
the store uses (:func:`~weight_cache.ranges.read_ranges`), without the tier write. The file was
verified when it entered the tier, so nothing is hashed here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from weight_cache.fetch import DEFAULT_CHUNK_BYTES, DEFAULT_CONCURRENCY
from weight_cache.local import FileRangeReader
from weight_cache.manifest import SafetensorsEntry
from weight_cache.materialize import TensorSink
from weight_cache.ranges import Range, plan_ranges, read_ranges
from weight_cache.safetensors_format import read_index


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A safetensors file on this machine, as a sink sees it
    (a :class:`~weight_cache.streaming.StreamedFile`: no digest, it was verified already)."""

    path: str
    size: int
    safetensors: SafetensorsEntry


def load_to_device(
    path: Path,
    device: str,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    range_bytes: int = DEFAULT_CHUNK_BYTES,
    pin: bool | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file at ``path``, on ``device``. Blocking.

    On the CPU this runs the same staged pipeline (pageable buffers), which is how it is tested
    on machines with no GPU; a CPU load that wants no copy maps the file instead.
    """
    index = read_index(str(path))
    file = LocalFile(path.name, path.stat().st_size, SafetensorsEntry.from_index(index))
    range_bytes = max(4096, range_bytes)
    concurrency = max(1, concurrency)
    sink = TensorSink(device, stage=True, pin=pin)
    staging = sink.staging
    assert staging is not None
    reader = FileRangeReader(path, str(path), etag=None)

    def land(item: Range) -> None:
        slot, buf = staging.take(item.length)
        try:
            reader.read_into(item.offset, buf)
            staging.landed(file, item.offset, slot, item.length)
        except BaseException:
            staging.give_back(slot)
            raise

    try:
        sink.opened(file, path)
        if file.size:
            staging.reserve(concurrency + 2, min(range_bytes, file.size))
            read_ranges(
                plan_ranges(file.size, range_bytes),
                land,
                concurrency=concurrency,
                cancel=threading.Event(),
                arrived=lambda item: sink.arrived(file, item.end),
            )
        sink.finished(file, path)
    finally:
        reader.close()
        sink.close()
    return sink.tensors[file.path]
