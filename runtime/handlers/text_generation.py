"""``text-generation``: a causal LM in the Hugging Face layout, served by the step-loop engine.

Reads ``config.json`` and the tokenizer files with transformers, builds the model on the meta
device from its config (no weight initialisation) and fills it with the tensors Ember streamed
(``model.safetensors``, or the shards ``model.safetensors.index.json`` names), on the model's
device, in the dtype the config asks (``options.dtype`` overrides it). It sleeps at ``host`` and
``disk`` through :class:`~runtime.handlers.torch_sleep.TorchWeights`, its engine stopped first
(running sequences end with ``abort`` and give their KV caches back) and started anew on wake.
Generation runs in the :class:`~runtime.generation.engine.Engine` the handler starts once
loaded; the routes reach it through :meth:`TextGenerationHandler.generator`. The v2 ``infer``
route works too: input ``text_input`` (BYTES), output ``text_output`` (BYTES), greedy,
``options.max_tokens`` tokens.

Options: ``max_running`` and ``max_waiting`` sequences, ``max_model_len`` (prompt and completion
tokens; default the config's ``max_position_embeddings``), ``max_tokens`` (the default
completion length), ``prefill_chunk`` (prompt tokens per engine step), ``max_kv_tokens`` (the
KV-cache bound, in tokens; default ``max_running`` x ``max_model_len``), ``dtype``.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.config import ModelConfig, TensorSpec
from runtime.errors import InferenceFailed, InvalidInput, ModelNotReady
from runtime.generation.engine import Engine
from runtime.generation.params import SamplingParams
from runtime.generation.stats import GenerationStats
from runtime.generation.streams import Delta, Event, Finished
from runtime.handlers.base import (
    HandlerLoadError,
    ModelHandler,
    StreamedTensors,
    WeightsCorrupt,
    WeightsMissing,
    parse_options,
    pick_device,
)
from runtime.handlers.meta_build import load_module
from runtime.handlers.options import TextGenerationOptions
from runtime.handlers.torch_sleep import TorchWeights
from runtime.handlers.torch_util import load_safetensors, streamed_file
from runtime.sleep import SleepLevel
from runtime.tensors import Tensor

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _weight_files(root: Path) -> list[str]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise WeightsCorrupt(f"cannot read {index}: {exc}") from exc
        return sorted(set(weight_map.values()))
    if not (root / "model.safetensors").is_file():
        raise WeightsMissing(f"{root} holds neither model.safetensors nor its index")
    return ["model.safetensors"]


_GONE = "the model was put to sleep or unloaded as the request began; retry"

# transformers' package replaces itself in sys.modules (a lazy module) as its import ends: a
# second thread whose ``from transformers import ...`` waited for that import is handed the
# module it began with, which holds none of the names (ImportError: two models of one replica
# loading at once). Its lazy submodules do the same, so what a load asks of transformers is done
# by one thread at a time; the weights are read outside it.
_TRANSFORMERS = threading.Lock()


class TextGenerationHandler(ModelHandler):
    platform = "pytorch"
    can_sleep = measures = takes_tensors = generates = True

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.options = parse_options(TextGenerationOptions, config)
        self.engine: Engine | None = None
        self.tokenizer: Any = None
        self.weights = TorchWeights(what="CausalLM", reread=self._read_weights)
        self.stats = GenerationStats()  # kept across the engines of sleeps and wakes
        self.dtype = torch.float32
        self.eos_token_ids: frozenset[int] = frozenset()
        self.max_model_len = 0
        self.inputs: tuple[TensorSpec, ...] = config.inputs or (
            TensorSpec(name="text_input", datatype="BYTES", shape=(1,)),
        )
        self.outputs: tuple[TensorSpec, ...] = config.outputs or (
            TensorSpec(name="text_output", datatype="BYTES", shape=(1,)),
        )

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        root = self.config.local_source()
        if not (root / "config.json").is_file():
            raise WeightsMissing(f"{root / 'config.json'} does not exist")
        self.weights.device = pick_device(self.config.device)
        try:
            with _TRANSFORMERS:
                from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

                hf_config = AutoConfig.from_pretrained(root, local_files_only=True)
                tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise HandlerLoadError(f"cannot read the model's config or tokenizer: {exc}") from exc
        dtype = _DTYPES[self.options.dtype] if self.options.dtype else None
        if dtype is None:
            dtype = getattr(hf_config, "dtype", None) or torch.float32
            if isinstance(dtype, str):
                dtype = _DTYPES.get(dtype, torch.float32)
        self.dtype = dtype
        state = self._read_weights(tensors)

        def build() -> torch.nn.Module:
            with _TRANSFORMERS:
                return AutoModelForCausalLM.from_config(hf_config, dtype=dtype)  # type: ignore[no-untyped-call,no-any-return]

        module = load_module(
            build,
            state,
            device=self.device,
            strict=True,
            init_missing=False,
            what=type(hf_config).__name__.removesuffix("Config") + "ForCausalLM",
        )
        eos = getattr(hf_config, "eos_token_id", None)
        eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        positions = getattr(hf_config, "max_position_embeddings", None) or 2048
        self.max_model_len = min(self.options.max_model_len or positions, positions)
        self.weights.adopt(module, file_keys=state)
        self.tokenizer, self.eos_token_ids = tokenizer, frozenset(eos_ids)
        self.engine = self._start_engine()

    def _read_weights(self, tensors: StreamedTensors | None = None) -> dict[str, torch.Tensor]:
        """The weights files' tensors on the device in the model's dtype (the streamed ones
        when ``tensors`` has them; what a wake from ``disk`` reads again)."""
        root = self.config.local_source()
        state: dict[str, torch.Tensor] = {}
        for name in _weight_files(root):
            loaded = load_safetensors(
                root / name, self.device, streamed=streamed_file(tensors, name)
            )
            state.update(
                {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in loaded.items()}
            )
        return state

    def _start_engine(self) -> Engine:
        return Engine(
            self.module,
            self.tokenizer,
            device=self.device,
            max_running=self.options.max_running,
            max_waiting=self.options.max_waiting,
            max_model_len=self.max_model_len,
            eos_token_ids=self.eos_token_ids,
            prefill_chunk=self.options.prefill_chunk,
            max_kv_tokens=self.options.max_kv_tokens,
            stats=self.stats,
        )

    def sleep(self, level: SleepLevel) -> None:
        """Stop the engine (its sequences end with ``abort``, their KV caches freed), then put
        the weights away at ``level``."""
        if self.engine is not None:
            self.engine.close()
        self.engine = None  # a request that took the model awake before this is told to retry
        self.weights.sleep(level)

    def drain(self, timeout_s: float) -> bool:
        """Wait (blocking) until the engine runs and holds no sequence, as a sleep waits
        before it stops the engine; False if ``timeout_s`` passed first."""
        engine = self.engine
        return engine is None or engine.drain(timeout_s)

    def wake(self) -> None:
        """The weights back on the device and a fresh engine (the same statistics)."""
        self.weights.wake()
        self.engine = self._start_engine()

    @property
    def device(self) -> str:
        return self.weights.device

    @property
    def module(self) -> torch.nn.Module | None:
        return self.weights.module

    def generator(self) -> Engine:
        """The running engine; 503 (retry) when the model went to sleep or was unloaded after
        the request found it awake."""
        if self.engine is None:
            raise ModelNotReady(_GONE)
        return self.engine

    def _tokenizer(self) -> Any:
        if self.tokenizer is None:  # unloaded after the request found it loaded
            raise ModelNotReady(_GONE)
        return self.tokenizer

    def encode_prompt(self, text: str) -> list[int]:
        """The prompt's token ids; 400 when it leaves no room for a token under max_model_len."""
        ids: list[int] = self._tokenizer()(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InvalidInput("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise InvalidInput(
                f"the prompt is {len(ids)} tokens long: this model takes at most "
                f"{self.max_model_len - 1} (max_model_len {self.max_model_len})"
            )
        return ids

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The messages rendered by the tokenizer's chat template, ready for the answer."""
        tokenizer = self._tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidInput("this model's tokenizer has no chat template")
        text: str = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return text

    def device_bytes(self) -> int:
        return self.weights.device_bytes() if self.module is not None else 0

    @property
    def input_limits(self) -> Mapping[str, str]:
        return {
            "max_model_len": str(self.max_model_len),
            "max_tokens": str(self.options.max_tokens),
        }

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """v2 ``infer``: each text greedily continued (blocking, in a worker thread)."""
        texts = inputs[self.inputs[0].name].array
        outputs = []
        for item in texts.reshape(-1):
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            outputs.append(self._complete(text).encode())
        name = self.outputs[0].name
        array = np.array(outputs, dtype=object).reshape(texts.shape)
        return {name: Tensor(name, "BYTES", array)}

    def _complete(self, text: str) -> str:
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        params = SamplingParams(max_tokens=self.options.max_tokens, temperature=0.0)
        self.generator().submit(self.encode_prompt(text), params, events.put)
        parts = []
        while True:
            event = events.get()
            if isinstance(event, Delta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                if event.reason == "error":
                    raise InferenceFailed(f"generation failed: {event.error}")
                return "".join(parts)

    def unload(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = self.tokenizer = None
        self.weights.unload()
