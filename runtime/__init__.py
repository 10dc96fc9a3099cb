"""Ember's predictor: an Open Inference Protocol (KServe v2) server for one or more models."""

__version__ = "0.1.0"
