"""The weight cache's errors: one base with an HTTP status; third-party errors are translated."""

from __future__ import annotations


class WeightCacheError(Exception):
    """Base of every weight cache failure; ``status_code`` is what a server would answer."""

    status_code = 500


class BadSource(WeightCacheError):
    """A source URI that cannot name a model (wrong scheme, empty bucket, ...)."""

    status_code = 400


class BadEntryKey(WeightCacheError):
    """A name that is neither a local tier entry key nor a model URI the tier holds."""

    status_code = 400


class BadSetting(WeightCacheError):
    """A store setting out of range (a read deadline, a minimum transfer rate)."""

    status_code = 400


class ObjectMissing(WeightCacheError):
    """The object, prefix, manifest or hub model is not there."""

    status_code = 404


class AccessDenied(WeightCacheError):
    """The store refused the credentials (or they are missing)."""

    status_code = 403


class ObjectChanged(WeightCacheError):
    """The object was replaced after the load was planned (its ETag no longer matches)."""

    status_code = 409


class CorruptCheckpoint(WeightCacheError):
    """Bytes that are not what the manifest or the safetensors format says they are."""

    status_code = 422


class StoreUnavailable(WeightCacheError):
    """The store kept failing (5xx, throttling, timeouts, resets) after the retries ran out."""

    status_code = 503


class StoreTooSlow(StoreUnavailable):
    """A ranged read that outlived its deadline or fell under the minimum transfer rate (an
    endpoint that trickles), after the retries ran out."""

    status_code = 504


class DiskFull(WeightCacheError):
    """The local tier's disk (or its budget) has no room for the model."""

    status_code = 507


class DeviceMemoryFull(WeightCacheError):
    """The device ran out of memory while the weights were placed on it."""

    status_code = 507
