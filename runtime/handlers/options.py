"""Each handler's ``options`` schema, and the registry from handler name to it.

Torch-free on purpose (pydantic only): ``ember up`` and ``ember deploy`` check every model's
options with these before anything starts, in a process that never imports torch. The handlers
parse their ``options`` with the same models (``runtime.handlers.base.parse_options``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", frozen=True)


class TorchModuleOptions(BaseModel):
    """``torch-module``: the ``nn.Module`` class, its constructor arguments, its weights file."""

    model_config = _STRICT

    module: str  # mlp.py:MLP or package.module:Class; a file is relative to the config
    kwargs: dict[str, Any] = {}  # passed to the constructor
    weights: str = "model.safetensors"  # inside the model's source directory
    # every parameter must be in the file, and nothing else; with false, the file's extra tensors
    # are ignored and parameters it lacks get the module's own initialisation
    strict: bool = True


class HFEncoderOptions(BaseModel):
    """``hf-encoder``: overrides of the model's own settings, and the input limits."""

    model_config = _STRICT

    max_length: int | None = Field(default=None, ge=2)
    normalize: bool | None = None
    # Unicode characters. 32768 is about 8k tokens of English, far past the 256-512 tokens such an
    # encoder sees, yet tokenizes in ~15 ms; a full batch of 32 of them in well under a second.
    max_text_chars: int = Field(default=32_768, ge=1)
    # every text of one request together: 32 texts at the limit (a full MiniLM batch)
    max_request_chars: int = Field(default=1_048_576, ge=1)
    truncate: bool = True


class KServeOptions(BaseModel):
    """``kserve``: the ``kserve.Model`` subclass and its extra constructor arguments."""

    model_config = _STRICT

    model_class: str  # my_model.py:MyModel or package.module:Class
    kwargs: dict[str, Any] = {}  # after the model's name


class TextGenerationOptions(BaseModel):
    """``text-generation``: the engine's bounds and the model's dtype."""

    model_config = _STRICT

    max_running: int = Field(default=8, ge=1)  # sequences decoded together
    max_waiting: int = Field(default=64, ge=0)  # past this, a new request is refused (503)
    max_model_len: int | None = Field(default=None, ge=2)  # prompt + completion tokens
    max_tokens: int = Field(default=16, ge=1)  # a completion's default length
    prefill_chunk: int = Field(default=512, ge=1)  # prompt tokens through the model per step
    # KV-cache tokens the running sequences may hold together; default max_running x max_model_len
    max_kv_tokens: int | None = Field(default=None, ge=2)
    dtype: Literal["float32", "float16", "bfloat16"] | None = None  # default: the config's


HANDLER_OPTIONS: Mapping[str, type[BaseModel]] = {
    "torch-module": TorchModuleOptions,
    "hf-encoder": HFEncoderOptions,
    "kserve": KServeOptions,
    "text-generation": TextGenerationOptions,
}
"""Handler name (a model config's ``handler``) to the schema of its ``options``."""
