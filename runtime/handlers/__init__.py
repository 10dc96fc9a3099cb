"""Model handlers: the seam between the data plane and a model's own code."""

from runtime.handlers.base import HandlerLoadError, ModelHandler, create_handler

__all__ = ["HandlerLoadError", "ModelHandler", "create_handler"]
