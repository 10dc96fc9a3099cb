"""numpy <-> torch conversions that know about BF16 and read-only request buffers."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.errors import InferenceFailed, InvalidInput
from runtime.handlers.base import (
    HandlerLoadError,
    StreamedTensors,
    WeightsCorrupt,
    WeightsMissing,
)
from runtime.tensors import NUMPY_DTYPES, Tensor

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}
_DATATYPE_OF = {v: k for k, v in TORCH_DTYPES.items()}


def to_torch(tensor: Tensor, device: str) -> torch.Tensor:
    array = tensor.array
    if tensor.datatype == "BYTES":
        raise InvalidInput(f"input '{tensor.name}' is BYTES, which a torch module cannot take")
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C")  # torch refuses to alias read-only request buffers
    if tensor.datatype == "BF16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(array).to(device)


def from_torch(name: str, value: torch.Tensor, datatype: str | None = None) -> Tensor:
    """A protocol tensor from a model's output, cast to the declared ``datatype`` if given."""
    value = value.detach()
    if value.device.type != "cpu":
        value = value.cpu()
    if datatype == "BF16" and value.dtype != torch.bfloat16:
        value = value.to(torch.bfloat16)
    if value.dtype == torch.bfloat16:
        bits = value.contiguous().view(torch.int16).numpy().view(np.uint16)
        return Tensor(name, "BF16", bits)
    if value.dtype not in _DATATYPE_OF:
        raise InferenceFailed(f"output '{name}' has dtype {value.dtype} with no protocol datatype")
    array: np.ndarray[Any, Any] = value.numpy()
    if (
        datatype is not None
        and datatype not in ("BF16", "BYTES")
        and datatype != _DATATYPE_OF[value.dtype]
    ):
        array = array.astype(NUMPY_DTYPES[datatype])
        return Tensor(name, datatype, array)
    return Tensor(name, _DATATYPE_OF[value.dtype], array)


def streamed_file(
    tensors: StreamedTensors | None, relative: str
) -> Mapping[str, torch.Tensor] | None:
    """The tensors streamed for the file at ``relative`` inside the model's directory, if any."""
    if not tensors:
        return None
    return tensors.get(posixpath.normpath(relative))


def load_safetensors(
    path: Path, device: str, *, streamed: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a missing, truncated or corrupt file into a clear error.

    ``streamed`` is what the weight cache made of the file while it downloaded it (CPU views of
    the file, or device copies made during the download): taken instead of reading the file.
    On the CPU the tensors are views of a memory map of the file (no copy); on a GPU the file is
    read by parallel threads into pinned buffers and copied asynchronously into one device
    buffer (:func:`weight_cache.device_load.load_to_device`), rather than tensor by tensor from
    pageable memory.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from weight_cache import CorruptCheckpoint, WeightCacheError, load_to_device

    if streamed is not None:
        return {
            k: v if v.device == torch.device(device) else v.to(device) for k, v in streamed.items()
        }
    if not path.is_file():
        raise WeightsMissing(f"weights file {path} does not exist")
    try:
        if torch.device(device).type != "cpu":
            return load_to_device(path, device)
        readahead(path)
        return load_file(str(path), device=device)
    except FileNotFoundError as exc:
        raise WeightsMissing(f"cannot read weights {path}: {exc}") from exc
    except (SafetensorError, RuntimeError, ValueError, CorruptCheckpoint) as exc:
        # a torch out-of-memory error is a RuntimeError too: it stays this one's cause
        raise WeightsCorrupt(f"cannot read weights {path}: {exc}") from exc
    except (OSError, WeightCacheError) as exc:  # its type (disk, device memory) says why
        raise HandlerLoadError(f"cannot read weights {path}: {exc}") from exc


def readahead(path: Path) -> None:
    """Ask the kernel to read the whole file now (``POSIX_FADV_WILLNEED``), asynchronously.

    safetensors maps the file and the tensors fault it in page by page, which the kernel's
    sequential readahead serves one window at a time; told up front, it keeps the disk's queue
    full instead. Measured here on a cold page cache: 1.3-1.9 GB/s against 0.4-1.2 GB/s without
    (``scripts/bench_load.py``). Nearly free when the file is already cached.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # the load that follows says what is wrong with the file
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass  # a filesystem that takes no advice loads as before
    finally:
        os.close(fd)


def adopts(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    """Whether :func:`load_state` will take ``state``'s tensors as they are (no copy).

    Only when every tensor has its parameter's dtype and shape and no two names share a tensor
    (adopting would untie them). Ties are told by storage, or by identity for tensors on the meta
    device, which have no storage to compare.
    """
    own = module.state_dict(keep_vars=True)
    seen: set[int] = set()
    for t in own.values():
        if not t.numel():
            continue
        key = id(t) if t.is_meta else t.untyped_storage().data_ptr()
        if key in seen:
            return False
        seen.add(key)
    return all(
        own[name].dtype == t.dtype and own[name].shape == t.shape
        for name, t in state.items()
        if name in own
    )


def load_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool) -> Any:
    """``module.load_state_dict``, taking the tensors as they are when they fit exactly.

    When :func:`adopts` says so the module adopts them (``assign``): no copy, so weights that are
    views of the tier file or already on the device stay so. Any mismatch (a cast, a reshape)
    takes the copying path, which also makes torch's own errors, and so does a module with tied
    parameters.
    """
    return module.load_state_dict(state, strict=strict, assign=adopts(module, state))
