"""A model's pool of replicas behind the activator: see :mod:`activator.pool.model_pool`."""

from activator.pool.clock import Clock, SystemClock
from activator.pool.model_pool import ModelPool, Ticket
from activator.pool.replicas import Replica

__all__ = ["Clock", "ModelPool", "Replica", "SystemClock", "Ticket"]
