"""Ember activator: the scale-to-zero front door (speaks to replicas over HTTP only)."""

__version__ = "0.1.0"
