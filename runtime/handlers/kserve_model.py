"""``kserve``: run an existing ``kserve.Model`` subclass unchanged, behind Ember's server.

Options::

    model_class: my_model.py:MyModel   # or package.module:Class; a file is relative to the config
    kwargs: {}                         # extra constructor arguments after the model name

The class is built as ``MyModel(name, **kwargs)`` and its ``load()`` called; each batch goes through
``Model.__call__`` (preprocess, predict, postprocess) as a v2 ``InferRequest``, so sync and async
models both work. Give ``inputs``/``outputs`` in the config for metadata and validation.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

import numpy as np

from runtime.config import ModelConfig, TensorSpec
from runtime.errors import InferenceFailed
from runtime.handlers.base import (
    HandlerLoadError,
    ModelHandler,
    StreamedTensors,
    import_object,
    parse_options,
)
from runtime.handlers.options import KServeOptions
from runtime.tensors import Tensor, datatype_of


class KServeModelHandler(ModelHandler):
    platform = "kserve"

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.options = parse_options(KServeOptions, config)
        self.inputs: tuple[TensorSpec, ...] = config.inputs
        self.outputs: tuple[TensorSpec, ...] = config.outputs
        self.model: Any = None
        self._loops = threading.local()
        self._all_loops: list[asyncio.AbstractEventLoop] = []
        self._lock = threading.Lock()

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        del tensors  # a kserve.Model reads its own files
        kserve = _import_kserve()

        cls = import_object(self.options.model_class, base_dir=self.config.base_dir)
        if not (isinstance(cls, type) and issubclass(cls, kserve.Model)):
            raise HandlerLoadError(f"{self.options.model_class} is not a kserve.Model subclass")
        try:
            model = cls(self.config.name, **self.options.kwargs)
            loaded = model.load()
        except Exception as exc:
            raise HandlerLoadError(f"{self.options.model_class}.load() failed: {exc}") from exc
        if loaded is False or not getattr(model, "ready", True):
            raise HandlerLoadError(f"{self.options.model_class}.load() did not make it ready")
        self.model = model

    def _loop(self) -> asyncio.AbstractEventLoop:
        # Each worker thread runs the model's coroutines on a loop of its own.
        loop: asyncio.AbstractEventLoop | None = getattr(self._loops, "loop", None)
        if loop is None:
            loop = asyncio.new_event_loop()
            self._loops.loop = loop
            with self._lock:
                self._all_loops.append(loop)
        return loop

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        from kserve import InferInput, InferRequest, InferResponse

        request = InferRequest(
            model_name=self.config.name,
            infer_inputs=[
                InferInput(name=t.name, shape=t.shape, datatype=t.datatype, data=_data(t))
                for t in inputs.values()
            ],
        )
        try:
            response, _ = self._loop().run_until_complete(self.model(request, {}))
        except Exception as exc:
            raise InferenceFailed(f"kserve model raised {type(exc).__name__}: {exc}") from exc
        if isinstance(response, InferResponse):
            outputs = {}
            for out in response.outputs:
                array = out.as_numpy()
                outputs[out.name] = Tensor(out.name, out.datatype, array)
            return outputs
        if isinstance(response, np.ndarray) and len(self.outputs) == 1:
            name = self.outputs[0].name
            return {name: Tensor(name, datatype_of(response), response)}
        raise InferenceFailed(
            f"kserve model returned {type(response).__name__}; a v2 model must return an "
            "InferResponse"
        )

    def warmup_inputs(self) -> dict[str, Tensor] | None:
        return None  # a user's model may have side effects; don't call it unasked

    def unload(self) -> None:
        if self.model is not None and hasattr(self.model, "stop"):
            self.model.stop()
        self.model = None
        with self._lock:
            loops, self._all_loops = self._all_loops, []
        for loop in loops:
            loop.close()


def _import_kserve() -> Any:
    """Import kserve, which parses ``sys.argv`` at import time and exits on flags it dislikes.

    Ember's own command line is none of its business, so it sees an empty one.
    """
    if "kserve" in sys.modules:
        return sys.modules["kserve"]
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
    except SystemExit as exc:
        raise HandlerLoadError(f"importing kserve failed (exit {exc.code})") from None
    finally:
        sys.argv = saved
    return kserve


def _data(tensor: Tensor) -> Any:
    if tensor.datatype == "BYTES":
        # as kserve itself decodes them: text as str, anything that is not UTF-8 as bytes
        return [_text_or_bytes(b) for b in tensor.array.reshape(-1)]
    return np.ascontiguousarray(tensor.array)


def _text_or_bytes(item: Any) -> Any:
    if not isinstance(item, bytes):
        return item
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        return item
