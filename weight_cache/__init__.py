"""Ember weight cache: object stores, safetensors planning and streaming, the local NVMe tier.

The face of the package is what ``__all__`` lists; callers outside it import these names from
``weight_cache`` itself::

    from weight_cache import LocalTier, pull

    report = await pull("s3://models/mlp", LocalTier(cache_dir))
    report.path  # the model's files, verified, in the tier

:func:`pull` takes any source (:class:`SourceURI`: ``s3://``, ``file://``, a path, ``hf://``);
every error is a :class:`WeightCacheError` (its subclasses say which kind). The errors and the
source type are light and imported at once; the rest is imported on first use, so a caller that
only checks a configuration never loads the streaming engine, pydantic's models or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from weight_cache.checkpoints import holds
from weight_cache.errors import (
    AccessDenied,
    BadEntryKey,
    BadSetting,
    BadSource,
    CorruptCheckpoint,
    DeviceMemoryFull,
    DiskFull,
    ObjectChanged,
    ObjectMissing,
    StoreTooSlow,
    StoreUnavailable,
    WeightCacheError,
)
from weight_cache.uri import SourceURI, is_remote, parse_source, parse_uri

if TYPE_CHECKING:
    from weight_cache.device_load import load_to_device
    from weight_cache.fetch import FetchReport, read_manifest
    from weight_cache.limits import StoreLimits
    from weight_cache.manifest import MANIFEST_NAME, Manifest
    from weight_cache.materialize import TensorSink
    from weight_cache.pulling import pull
    from weight_cache.push import push_source, total_bytes
    from weight_cache.s3 import warm_session
    from weight_cache.stores import open_store
    from weight_cache.streaming import FetchSink
    from weight_cache.tier import LocalTier, TierEntry
    from weight_cache.verify import verify_model

__all__ = [
    "MANIFEST_NAME",
    "AccessDenied",
    "BadEntryKey",
    "BadSetting",
    "BadSource",
    "CorruptCheckpoint",
    "DeviceMemoryFull",
    "DiskFull",
    "FetchReport",
    "FetchSink",
    "LocalTier",
    "Manifest",
    "ObjectChanged",
    "ObjectMissing",
    "SourceURI",
    "StoreLimits",
    "StoreTooSlow",
    "StoreUnavailable",
    "TensorSink",
    "TierEntry",
    "WeightCacheError",
    "holds",
    "is_remote",
    "load_to_device",
    "open_store",
    "parse_source",
    "parse_uri",
    "pull",
    "push_source",
    "read_manifest",
    "total_bytes",
    "verify_model",
    "warm_session",
]

# imported on first use: the name -> the module that defines it
_LAZY = {
    "FetchReport": "fetch",
    "FetchSink": "streaming",
    "LocalTier": "tier",
    "MANIFEST_NAME": "manifest",
    "Manifest": "manifest",
    "StoreLimits": "limits",
    "TensorSink": "materialize",  # imports torch
    "TierEntry": "tier",
    "load_to_device": "device_load",  # imports torch
    "open_store": "stores",
    "pull": "pulling",
    "push_source": "push",
    "read_manifest": "fetch",
    "total_bytes": "push",
    "verify_model": "verify",
    "warm_session": "s3",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:  # not ours: `from weight_cache import errors` then imports the module
        raise AttributeError(f"module 'weight_cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"weight_cache.{module}"), name)
    globals()[name] = value
    return value
