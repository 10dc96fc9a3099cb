"""``hf-encoder``: a sentence-transformers BERT encoder (e.g. all-MiniLM-L6-v2) from its files.

Reads ``config.json``, ``tokenizer.json`` and ``model.safetensors`` from the model directory, and
the sentence-transformers settings when present (``sentence_bert_config.json`` for the maximum
length, ``1_Pooling/config.json`` for mean pooling, ``modules.json`` for normalisation).
Input ``text`` (BYTES, one string per item), output ``embedding`` (FP32, one vector per item).

Options: ``max_length`` (tokens, overrides the model's), ``normalize`` (overrides modules.json),
and the input limits, published in the model metadata's ``properties``: ``max_text_chars`` per text
and ``max_request_chars`` per request, refused (400) before anything is queued or tokenized, since
the tokenizer reads a whole text before it truncates it (about a microsecond a character: a 20 MB
text held a replica for seconds); ``truncate`` (default true, as sentence-transformers does) cuts
a text past ``max_length`` tokens, false refuses it (400) instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.config import ModelConfig, TensorSpec
from runtime.errors import InvalidInput
from runtime.handlers.base import (
    HandlerLoadError,
    ModelHandler,
    StreamedTensors,
    WeightsCorrupt,
    WeightsMissing,
    parse_options,
    pick_device,
)
from runtime.handlers.bert import BertConfig, BertEncoder, mean_pool
from runtime.handlers.meta_build import load_module
from runtime.handlers.options import HFEncoderOptions
from runtime.handlers.torch_sleep import TorchWeights
from runtime.handlers.torch_util import load_safetensors, streamed_file
from runtime.sleep import SleepLevel
from runtime.tensors import Tensor


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        if default is not None:
            return default
        raise WeightsMissing(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsCorrupt(f"cannot read {path}: {exc}") from exc
    except OSError as exc:
        raise HandlerLoadError(f"cannot read {path}: {exc}") from exc


# a UTF-8 character is at most 4 bytes: a text longer than 4 * limit bytes is over the limit
_UTF8_MAX = 4


def _utf8_text(item: Any, index: int) -> str:
    if not isinstance(item, bytes):
        return str(item)
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input text {index} holds bytes that are not UTF-8") from None


def _too_long(index: int, limit: int) -> InvalidInput:
    return InvalidInput(
        f"input text {index} is longer than this model's limit of {limit} characters "
        "(max_text_chars)"
    )


class HFEncoderHandler(ModelHandler):
    platform = "pytorch"
    can_sleep = measures = takes_tensors = checks_inputs = embeds = True

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.options = parse_options(HFEncoderOptions, config)
        self.weights = TorchWeights(what="BertEncoder", reread=self._read_weights)
        self.tokenizer: Any = None
        self.normalize = True
        self.max_length = 0  # tokens; known once load() has read the model's settings
        # Default tensors; the embedding size is filled in from config.json by load().
        item_text: tuple[int, ...] = () if config.batching else (-1,)
        self.inputs: tuple[TensorSpec, ...] = config.inputs or (
            TensorSpec(name="text", datatype="BYTES", shape=item_text),
        )
        self.outputs: tuple[TensorSpec, ...] = config.outputs or (
            TensorSpec(name="embedding", datatype="FP32", shape=(*item_text, -1)),
        )

    @property
    def device(self) -> str:
        return self.weights.device

    @property
    def model(self) -> BertEncoder | None:
        model = self.weights.module
        assert model is None or isinstance(model, BertEncoder)
        return model

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        from tokenizers import Tokenizer

        root = self.config.local_source()
        self.weights.device = pick_device(self.config.device)
        try:
            bert_config = BertConfig.from_dict(_read_json(root / "config.json"))
        except (TypeError, ValueError) as exc:
            raise HandlerLoadError(f"{root / 'config.json'}: {exc}") from exc
        st_config = _read_json(root / "sentence_bert_config.json", {})
        pooling = _read_json(root / "1_Pooling" / "config.json", {"pooling_mode_mean_tokens": True})
        if not pooling.get("pooling_mode_mean_tokens", False):
            raise HandlerLoadError("only mean pooling is supported by the hf-encoder handler")
        modules = _read_json(root / "modules.json", [])
        self.normalize = (
            self.options.normalize
            if self.options.normalize is not None
            else any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
        )
        max_length = self.options.max_length or int(
            st_config.get("max_seq_length", bert_config.max_position_embeddings)
        )
        max_length = min(max_length, bert_config.max_position_embeddings)
        try:
            tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        except Exception as exc:  # the tokenizers library raises a plain Exception
            raise HandlerLoadError(f"cannot read {root / 'tokenizer.json'}: {exc}") from exc
        if self.options.truncate:
            tokenizer.enable_truncation(max_length=max_length)
        else:  # count every token, to refuse a text past max_length by name
            tokenizer.no_truncation()
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.max_length = max_length
        state = self._read_weights(streamed_file(tensors, "model.safetensors"))
        model = load_module(
            lambda: BertEncoder(bert_config),
            state,
            device=self.device,
            strict=False,  # a checkpoint's pooler and position ids are not needed
            init_missing=False,
            what="BertEncoder",
        )
        assert isinstance(model, BertEncoder)
        self.weights.adopt(model, file_keys=state)
        self.tokenizer = tokenizer
        spec = self.outputs[0]
        if not self.config.outputs:
            self.outputs = (
                spec.model_copy(update={"shape": (*spec.shape[:-1], bert_config.hidden_size)}),
            )

    def _read_weights(
        self, streamed: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        path = self.config.local_source() / "model.safetensors"
        state = load_safetensors(path, self.device, streamed=streamed)
        return {k.removeprefix("bert."): v for k, v in state.items()}

    def sleep(self, level: SleepLevel) -> None:
        self.weights.sleep(level)

    def wake(self) -> None:
        self.weights.wake()

    def device_bytes(self) -> int:
        return self.weights.device_bytes()

    @property
    def input_limits(self) -> dict[str, str]:
        o = self.options
        return {
            "max_text_chars": str(o.max_text_chars),
            "max_request_chars": str(o.max_request_chars),
            "max_length": str(self.max_length),
            "truncate": "true" if o.truncate else "false",
        }

    def check_inputs(self, inputs: dict[str, Tensor]) -> None:
        """Refuse overlong texts before they are queued, let alone tokenized.

        Runs on the event loop, so it decodes at most ``4 * max_text_chars`` bytes of a text and
        stops once the request is past ``max_request_chars``: beyond one step per text (which
        decoding the request already took), its work is bounded whatever was sent.
        """
        limit, budget = self.options.max_text_chars, self.options.max_request_chars
        total = 0
        for index, item in enumerate(inputs[self.inputs[0].name].array.reshape(-1)):
            if isinstance(item, bytes) and len(item) > _UTF8_MAX * limit:
                raise _too_long(index, limit)
            chars = len(_utf8_text(item, index))
            if chars > limit:
                raise _too_long(index, limit)
            total += chars
            if total > budget:
                raise InvalidInput(
                    f"input texts 0..{index} hold more than this model's limit of {budget} "
                    "characters in one request (max_request_chars); send fewer texts per request"
                )

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self.model is not None, "predict before load"
        text = inputs[self.inputs[0].name].array
        lead_shape = text.shape
        limit = self.options.max_text_chars
        texts = []
        for index, item in enumerate(text.reshape(-1)):
            texts.append(_utf8_text(item, index))
            if len(texts[-1]) > limit:  # the data plane checked; a direct caller may not have
                raise _too_long(index, limit)
        if not texts:
            hidden = self.model.config.hidden_size
            empty = np.zeros((*lead_shape, hidden), dtype=np.float32)
            return {self.outputs[0].name: Tensor(self.outputs[0].name, "FP32", empty)}
        encoded = self.tokenizer.encode_batch(texts)
        if not self.options.truncate:
            self._check_token_counts(encoded)
        ids = torch.tensor([e.ids for e in encoded], device=self.device)
        mask = torch.tensor([e.attention_mask for e in encoded], device=self.device)
        types = torch.tensor([e.type_ids for e in encoded], device=self.device)
        with torch.inference_mode():
            embedding = mean_pool(self.model(ids, mask, types), mask)
            if self.normalize:
                embedding = torch.nn.functional.normalize(embedding, p=2, dim=1)
        array = embedding.float().cpu().numpy().reshape(*lead_shape, -1)
        name = self.outputs[0].name
        return {name: Tensor(name, "FP32", array)}

    def count_tokens(self, texts: list[str]) -> int:
        """How many tokens ``texts`` take as the model reads them (truncated, special tokens
        counted, padding not): an OpenAI embeddings answer's ``usage``. Blocking."""
        if not texts or self.tokenizer is None:
            return 0
        return sum(sum(e.attention_mask) for e in self.tokenizer.encode_batch(texts))

    def _check_token_counts(self, encoded: list[Any]) -> None:
        for index, e in enumerate(encoded):
            tokens = sum(e.attention_mask)  # padding excluded
            if tokens > self.max_length:
                raise InvalidInput(
                    f"input text {index} is {tokens} tokens long, over this model's limit of "
                    f"{self.max_length} (max_length, counting special tokens); truncate is off"
                )

    def warmup_inputs(self) -> dict[str, Tensor] | None:
        text = np.array([b"warm up"], dtype=object)
        return {self.inputs[0].name: Tensor(self.inputs[0].name, "BYTES", text)}

    def unload(self) -> None:
        self.weights.unload()
        self.tokenizer = None
