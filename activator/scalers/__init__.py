"""Scalers: how the activator gets replicas of a model (local processes, or Knative Services)."""

from activator.scalers.base import ReplicaHandle, Scaler, StatusReport

__all__ = ["ReplicaHandle", "Scaler", "StatusReport"]
