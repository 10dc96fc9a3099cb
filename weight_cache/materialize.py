"""Tensors while the file still downloads: a :class:`~weight_cache.fetch.FetchSink` for torch.

The fetch announces each file's contiguous prefix as it grows; every tensor whose bytes all lie in
it is made right then, in file order:

* **on the CPU** a tensor is a view of the tier file itself (a private, copy-on-write mapping of
  it): no copy, and nothing that is ever reused, since the file is only renamed into place;
* **on a GPU** the bytes go through a ring of pinned staging buffers and non-blocking copies on a
  side stream into one device buffer per file, so the host-to-device copies overlap the download;
  a staging buffer is refilled only after the copy out of it has completed (its CUDA event), so
  no tensor aliases a reused buffer. The tensors are views of that device buffer.

``stage=True`` runs the staged path on the CPU too (plain buffers, synchronous copies), which is
how the tests check it on a machine with no GPU. torch is imported here only, so the CLI's
push and pull never load it.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weight_cache.errors import CorruptCheckpoint
from weight_cache.manifest import FileEntry
from weight_cache.safetensors_format import TensorInfo

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
    entry: FileEntry
    pending: deque[TensorInfo]  # not yet made, in file order
    data_start: int
    mapping: mmap.mmap | None = None  # CPU: the partial file, privately mapped
    device_buffer: torch.Tensor | None = None  # staged: the file's data section
    copied: int = 0  # staged: file offset up to which bytes went to the device buffer
    source: Any = None  # staged: the partial file, read through a shared mapping
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class TensorSink:
    """Collects ``tensors[file path][tensor name]`` for every safetensors file fetched."""

    def __init__(
        self,
        device: str = "cpu",
        *,
        stage: bool | None = None,
        staging_bytes: int = DEFAULT_STAGING_BYTES,
        ring: int = DEFAULT_RING,
    ) -> None:
        self.device = torch.device(device)
        self.stage = self.device.type != "cpu" if stage is None else stage
        self.tensors: dict[str, dict[str, torch.Tensor]] = {}
        self.materialise_s = 0.0  # time spent making tensors and staging copies (in the fetch)
        self.device_wait_s = 0.0  # time spent waiting for the device's copies to complete
        self.staged_bytes = 0
        self._files: dict[str, _File] = {}
        self._lock = threading.Lock()
        self._staging_bytes = max(4096, staging_bytes)
        self._ring_size = max(1, ring)
        self._ring: list[torch.Tensor] = []
        self._events: list[Any] = []  # per ring slot: the CUDA event of the copy out of it
        self._next = 0
        self._stream: Any = None
        if self.stage:
            cuda = self.device.type == "cuda"
            if cuda:
                self._stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
            self._ring = [
                torch.empty(self._staging_bytes, dtype=torch.uint8, pin_memory=cuda)
                for _ in range(self._ring_size)
            ]
            self._events = [None] * self._ring_size

    # ---------------------------------------------------------------------- FetchSink
    def opened(self, entry: FileEntry, partial: Path) -> None:
        if entry.safetensors is None:
            return
        with self._lock:  # files may be fetched side by side; the ring is shared
            self._opened(entry, partial)

    def _opened(self, entry: FileEntry, partial: Path) -> None:
        assert entry.safetensors is not None
        infos = sorted(entry.safetensors.tensor_infos(), key=lambda t: t.start)
        for info in infos:
            if info.dtype not in TORCH_DTYPES:
                raise CorruptCheckpoint(f"{entry.path}: {info.name} has dtype {info.dtype}")
        state = _File(entry, deque(infos), entry.safetensors.header_bytes)
        if entry.size:
            with partial.open("rb") as f:
                # private and writable: torch wants a writable buffer; nothing writes to it
                mapping = mmap.mmap(
                    f.fileno(),
                    entry.size,
                    flags=mmap.MAP_PRIVATE,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                )
            if self.stage:
                state.source = mapping
                state.device_buffer = torch.empty(
                    entry.size - state.data_start, dtype=torch.uint8, device=self.device
                )
                if self._stream is not None:  # the allocation is ordered before the copies
                    self._stream.wait_stream(torch.cuda.current_stream(self.device))
            else:
                state.mapping = mapping
        self._files[entry.path] = state

    def arrived(self, entry: FileEntry, upto: int) -> None:
        state = self._files.get(entry.path)
        if state is None:
            return
        with self._lock:
            self._arrived(state, upto)

    def _arrived(self, state: _File, upto: int) -> None:
        started = time.perf_counter()
        if self.stage:
            self._copy(state, upto)
        while state.pending and state.pending[0].end <= upto:
            info = state.pending.popleft()
            state.tensors[info.name] = self._tensor(state, info)
        self.materialise_s += time.perf_counter() - started

    def finished(self, entry: FileEntry, final: Path) -> None:
        with self._lock:
            self._finished(entry)

    def _finished(self, entry: FileEntry) -> None:
        state = self._files.pop(entry.path, None)
        if state is None:
            return
        if state.pending:
            raise CorruptCheckpoint(f"{entry.path}: {state.pending[0].name} never arrived")
        if state.source is not None:
            self._sync()  # the copies out of the file's mapping are done before it goes
            _close(state.source)
        self.tensors[entry.path] = state.tensors

    # ------------------------------------------------------------------- the two paths
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

    def _copy(self, state: _File, upto: int) -> None:
        """Bytes ``[copied, upto)`` of the data section to the device, a staging slot at a time."""
        assert state.device_buffer is not None
        start = max(state.copied, state.data_start)
        while start < upto:
            length = min(self._staging_bytes, upto - start)
            slot = self._next
            self._next = (self._next + 1) % self._ring_size
            if self._events[slot] is not None:
                self._events[slot].synchronize()  # the copy out of this slot has finished
            staging = self._ring[slot][:length]
            staging.copy_(
                torch.frombuffer(state.source, dtype=torch.uint8, count=length, offset=start)
            )
            target = state.device_buffer[
                start - state.data_start : start - state.data_start + length
            ]
            if self._stream is not None:
                with torch.cuda.stream(self._stream):
                    target.copy_(staging, non_blocking=True)
                    event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                    event.record(self._stream)
                self._events[slot] = event
            else:
                target.copy_(staging)
            self.staged_bytes += length
            start += length
        state.copied = max(state.copied, upto)

    def _sync(self) -> None:
        if self._stream is not None:
            started = time.perf_counter()
            self._stream.synchronize()
            self.device_wait_s += time.perf_counter() - started

    def close(self) -> None:
        """Wait for the copies in flight and let go of the staging buffers (tensors stay)."""
        self._sync()
        for state in self._files.values():
            if state.source is not None:
                _close(state.source)
        self._files.clear()
        self._ring.clear()
        self._events.clear()


def _close(mapping: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
        mapping.close()
