"""Tensors while the file still downloads: a :class:`~weight_cache.streaming.FetchSink` for torch.

The fetch announces each file's contiguous, verified prefix as it grows; every tensor whose bytes
all lie in it is made right then, in file order:

* **on the CPU** a tensor is a view of the tier file itself (a private, copy-on-write mapping of
  it): no copy, and nothing that is ever reused, since the file is only renamed into place;
* **staged** (on a GPU) the sink lends the fetch a bounded ring of pinned host buffers
  (:class:`~weight_cache.streaming.Staging`): each range is read from the store into a slot,
  written to the tier file from it and copied from it, asynchronously on a side stream, into one
  device buffer per file: one pass, nothing read back through a mapping. A slot is handed out
  again only once the copy out of it has completed (a blocking CUDA event: the waiting thread
  sleeps rather than spins). The tensors are views of the device buffer.

``stage=True`` runs the staged path on the CPU too (pageable buffers, plain ``memcpy`` into a
host buffer, no torch intra-op threads), which is how machines with no GPU test it and measure
its CPU cost. Pinned memory that cannot be had falls back to pageable buffers, logged. torch is
imported here only, so the CLI's push and pull never load it.
"""

from __future__ import annotations

import logging
import mmap
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weight_cache.errors import CorruptCheckpoint, DeviceMemoryFull
from weight_cache.safetensors_format import TensorInfo
from weight_cache.streaming import StreamedFile

log = logging.getLogger("ember.weight_cache")

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "I16": torch.int16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "U32": torch.uint32,
    "I32": torch.int32,
    "F32": torch.float32,
    "U64": torch.uint64,
    "I64": torch.int64,
    "F64": torch.float64,
}
DEFAULT_STAGING_BYTES = 8 * 1024 * 1024
DEFAULT_RING = 4


@dataclass
class _File:
    entry: StreamedFile
    pending: deque[TensorInfo]  # not yet made, in file order
    data_start: int
    mapping: mmap.mmap | None = None  # CPU: the partial file, privately mapped
    device_buffer: torch.Tensor | None = None  # staged: the file's data section
    host_view: np.ndarray[Any, Any] | None = None  # staged on the CPU: the same, as numpy
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class TensorSink:
    """Collects ``tensors[file path][tensor name]`` for every safetensors file fetched."""

    def __init__(
        self,
        device: str = "cpu",
        *,
        stage: bool | None = None,
        pin: bool | None = None,
        staging_bytes: int = DEFAULT_STAGING_BYTES,
        ring: int = DEFAULT_RING,
    ) -> None:
        self.device = torch.device(device)
        self.stage = self.device.type != "cpu" if stage is None else stage
        self.pin = self.device.type == "cuda" if pin is None else pin
        self.tensors: dict[str, dict[str, torch.Tensor]] = {}
        self.materialise_s = 0.0  # time spent making tensors (in the fetch's coordinating thread)
        self.device_wait_s = 0.0  # time spent waiting for the device's copies to complete
        self.staged_bytes = 0
        self._files: dict[str, _File] = {}
        self._lock = threading.Lock()
        self._staging_bytes = max(4096, staging_bytes)
        self._ring: list[torch.Tensor] = []  # the slots' buffers
        self._views: list[memoryview] = []
        self._events: list[Any] = []  # per slot: the CUDA event of the copy out of it, or None
        # per slot out with a reader: the buffer it was handed (``reserve`` may replace a slot's
        # buffer meanwhile, for another file fetched beside it; the copy must come from this one)
        self._lent: dict[int, torch.Tensor] = {}
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stream: Any = None
        if self.stage:
            if self.device.type == "cuda":
                self._stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
            self.reserve(max(1, ring), self._staging_bytes)

    @property
    def staging(self) -> TensorSink | None:
        """The sink itself when it stages (a device), else None."""
        return self if self.stage else None

    # ---------------------------------------------------------------------- Staging
    def reserve(self, slots: int, length: int) -> None:
        """At least ``slots`` slots of at least ``length`` bytes. Called before the reads start."""
        with self._lock:
            for slot in range(len(self._ring)):
                if self._ring[slot].numel() < length:
                    self._sync_slot(slot)
                    self._set_slot(slot, self._buffer(length))
            while len(self._ring) < slots:
                self._ring.append(torch.empty(0, dtype=torch.uint8))
                self._views.append(memoryview(b""))
                self._events.append(None)
                self._set_slot(len(self._ring) - 1, self._buffer(max(length, 1)))
                self._free.put(len(self._ring) - 1)

    def take(self, length: int) -> tuple[int, memoryview]:
        """A free slot and its buffer; blocks until the copy out of one completes."""
        slot = self._free.get()
        self._sync_slot(slot)  # the copy out of it has completed (a blocking wait, no spin)
        with self._lock:
            self._lent[slot] = self._ring[slot]
            return slot, self._views[slot][:length]

    def give_back(self, slot: int) -> None:
        """Return an unused slot."""
        self._lent.pop(slot, None)
        self._free.put(slot)

    def landed(self, entry: StreamedFile, offset: int, slot: int, length: int) -> None:
        """Copy the data-section part of a filled slot to the file's device buffer."""
        lent = self._lent.pop(slot)
        state = self._files.get(entry.path)
        first = max(offset, state.data_start) if state is not None else 0
        count = offset + length - first  # a chunk may begin in the header
        if state is None or state.device_buffer is None or count <= 0:
            self._free.put(slot)
            return
        source = lent[first - offset : first - offset + count]
        at = first - state.data_start
        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                state.device_buffer[at : at + count].copy_(source, non_blocking=True)
                event = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]
                event.record(self._stream)
            self._events[slot] = event
        else:
            assert state.host_view is not None  # numpy's copy: one memcpy, the GIL released
            state.host_view[at : at + count] = source.numpy()
        with self._lock:
            self.staged_bytes += count
        self._free.put(slot)

    def _buffer(self, length: int) -> torch.Tensor:
        if self.pin:
            try:
                return self._pinned(length)
            except RuntimeError as exc:
                log.warning(
                    "pinned host memory unavailable (%s): staging through pageable buffers", exc
                )
                self.pin = False
        return torch.empty(length, dtype=torch.uint8)

    def _pinned(self, length: int) -> torch.Tensor:
        return torch.empty(length, dtype=torch.uint8, pin_memory=True)

    def _set_slot(self, slot: int, buffer: torch.Tensor) -> None:
        self._ring[slot] = buffer
        self._views[slot] = memoryview(buffer.numpy()).cast("B")  # type: ignore[arg-type]
        self._events[slot] = None

    def _sync_slot(self, slot: int) -> None:
        event = self._events[slot]
        if event is not None:
            started = time.perf_counter()
            event.synchronize()
            self._events[slot] = None
            self.device_wait_s += time.perf_counter() - started

    # ---------------------------------------------------------------------- FetchSink
    def opened(self, entry: StreamedFile, partial: Path) -> None:
        """Plan the tensors of a safetensors file about to arrive (others: nothing)."""
        if entry.safetensors is None:
            return
        with self._lock:  # files may be fetched side by side
            self._opened(entry, partial)

    def _opened(self, entry: StreamedFile, partial: Path) -> None:
        assert entry.safetensors is not None
        infos = sorted(entry.safetensors.tensor_infos(), key=lambda t: t.start)
        for info in infos:
            if info.dtype not in TORCH_DTYPES:
                raise CorruptCheckpoint(f"{entry.path}: {info.name} has dtype {info.dtype}")
        state = _File(entry, deque(infos), entry.safetensors.header_bytes)
        if entry.size and self.stage:
            state.device_buffer = self._device_buffer(entry, entry.size - state.data_start)
            if state.device_buffer.device.type == "cpu":
                state.host_view = state.device_buffer.numpy()
            elif self._stream is not None:  # the allocation is ordered before the copies
                self._stream.wait_stream(torch.cuda.current_stream(self.device))
        elif entry.size:
            with partial.open("rb") as f:
                # private and writable: torch wants a writable buffer; nothing writes to it
                state.mapping = mmap.mmap(
                    f.fileno(),
                    entry.size,
                    flags=mmap.MAP_PRIVATE,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                )
        self._files[entry.path] = state

    def _allocate(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def _device_buffer(self, entry: StreamedFile, nbytes: int) -> torch.Tensor:
        try:
            return self._allocate(nbytes)
        except torch.OutOfMemoryError as exc:
            raise DeviceMemoryFull(
                f"{self.device} has no room for {entry.path} ({nbytes} bytes of tensors): {exc}"
            ) from None

    def arrived(self, entry: StreamedFile, upto: int) -> None:
        """Make every tensor whose bytes lie in the prefix ``[0, upto)``."""
        state = self._files.get(entry.path)
        if state is None:
            return
        started = time.perf_counter()
        with self._lock:
            while state.pending and state.pending[0].end <= upto:
                info = state.pending.popleft()
                state.tensors[info.name] = self._tensor(state, info)
        self.materialise_s += time.perf_counter() - started

    def finished(self, entry: StreamedFile, final: Path) -> None:
        """The file is complete: its tensors join ``tensors``."""
        with self._lock:
            state = self._files.pop(entry.path, None)
        if state is None:
            return
        if state.pending:
            raise CorruptCheckpoint(f"{entry.path}: {state.pending[0].name} never arrived")
        if state.device_buffer is not None:
            self._sync()  # the copies into the file's buffer are done before its tensors are used
        self.tensors[entry.path] = state.tensors

    # ------------------------------------------------------------------- the tensors
    def _tensor(self, state: _File, info: TensorInfo) -> torch.Tensor:
        dtype = TORCH_DTYPES[info.dtype]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype, device=self.device)
        if state.mapping is not None:
            count = info.nbytes // dtype.itemsize
            flat = torch.frombuffer(state.mapping, dtype=dtype, count=count, offset=info.start)
            return flat.view(info.shape)
        assert state.device_buffer is not None
        raw = state.device_buffer[info.start - state.data_start : info.end - state.data_start]
        if (info.start - state.data_start) % dtype.itemsize:
            raw = raw.clone()  # an unaligned tensor (old writers): its own, aligned storage
        return raw.view(dtype).view(info.shape)

    def _sync(self) -> None:
        if self._stream is not None:
            started = time.perf_counter()
            self._stream.synchronize()
            self.device_wait_s += time.perf_counter() - started

    def close(self) -> None:
        """Wait for the copies in flight and let go of the staging buffers (tensors stay)."""
        self._sync()
        self._files.clear()
        self._ring.clear()
        self._views.clear()
        self._events.clear()
        self._lent.clear()
        self._free = queue.SimpleQueue()
