"""Ember activator: the scale-to-zero front door (speaks to replicas over HTTP only)."""
