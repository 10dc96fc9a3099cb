"""The contracts' one error: a configuration that breaks them, with the HTTP status it maps to."""

from __future__ import annotations


class ConfigError(Exception):
    """``ember.yaml``, a model config it names, or a pre-warm window is missing or invalid."""

    status_code = 400
