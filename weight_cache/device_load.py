"""A local safetensors file onto a device: parallel reads into staging buffers, async copies.

What a model loads from the warm tier when its weights go to a GPU. safetensors'
``load_file(device=...)`` reads through a memory map and copies tensor by tensor from pageable
memory; here ``concurrency`` threads ``pread`` ranges of the file into the slots of a
:class:`~weight_cache.materialize.TensorSink`'s ring of pinned buffers, and each slot is copied
asynchronously into one device buffer for the whole file: the same one-pass pipeline a fetch
from the store uses (:func:`~weight_cache.streaming.stream_ranges`), without the tier write. The
file was verified when it entered the tier, so nothing is hashed here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from weight_cache.fetch import DEFAULT_CHUNK_BYTES, DEFAULT_CONCURRENCY
from weight_cache.local import FileRangeReader
from weight_cache.manifest import FileEntry, SafetensorsEntry
from weight_cache.materialize import TensorSink
from weight_cache.safetensors_format import read_index
from weight_cache.streaming import stream_ranges

# A local file has no manifest digest; nothing compares against this one.
_UNCHECKED = "0" * 64


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
    entry = FileEntry(
        path=path.name,
        size=path.stat().st_size,
        etag="",
        sha256=_UNCHECKED,
        safetensors=SafetensorsEntry.from_index(index),
    )
    sink = TensorSink(device, stage=True, pin=pin)
    reader = FileRangeReader(path, str(path), etag=None)
    try:
        sink.opened(entry, path)
        stream_ranges(
            reader,
            entry,
            str(path),
            fd=None,
            concurrency=max(1, concurrency),
            range_bytes=max(4096, range_bytes),
            sink=sink,
            cancel=threading.Event(),
        )
        sink.finished(entry, path)
    finally:
        reader.close()
        sink.close()
    return sink.tensors[entry.path]
