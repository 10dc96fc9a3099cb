"""Scalers: how the activator gets replicas of a model (local processes, or Knative Services)."""

from activator.scalers.base import ReplicaHandle, Scaler, probe_ready

__all__ = ["ReplicaHandle", "Scaler", "probe_ready"]
