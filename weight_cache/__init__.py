"""Ember weight cache: object stores, safetensors planning and streaming, the local NVMe tier."""
