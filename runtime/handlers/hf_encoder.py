"""``hf-encoder``: a sentence-transformers BERT encoder (e.g. all-MiniLM-L6-v2) from its files.

Reads ``config.json``, ``tokenizer.json`` and ``model.safetensors`` from the model directory, and
the sentence-transformers settings when present (``sentence_bert_config.json`` for the maximum
length, ``1_Pooling/config.json`` for mean pooling, ``modules.json`` for normalisation).
Input ``text`` (BYTES, one string per item), output ``embedding`` (FP32, one vector per item).

Options: ``max_length`` (tokens, overrides the model's), ``normalize`` (overrides modules.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from runtime.config import ModelConfig, TensorSpec
from runtime.errors import InvalidInput
from runtime.handlers.base import (
    HandlerLoadError,
    StreamedTensors,
    WeightsCorrupt,
    WeightsMissing,
    parse_options,
    pick_device,
)
from runtime.handlers.bert import BertConfig, BertEncoder, mean_pool
from runtime.handlers.meta_build import load_module
from runtime.handlers.torch_util import load_safetensors, streamed_file
from runtime.tensors import Tensor


class HFEncoderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int | None = Field(default=None, ge=2)
    normalize: bool | None = None


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


class HFEncoderHandler:
    platform = "pytorch"

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.options = parse_options(HFEncoderOptions, config)
        self.device = "cpu"
        self.model: BertEncoder | None = None
        self.tokenizer: Any = None
        self.normalize = True
        # Default tensors; the embedding size is filled in from config.json by load().
        item_text: tuple[int, ...] = () if config.batching else (-1,)
        self.inputs: tuple[TensorSpec, ...] = config.inputs or (
            TensorSpec(name="text", datatype="BYTES", shape=item_text),
        )
        self.outputs: tuple[TensorSpec, ...] = config.outputs or (
            TensorSpec(name="embedding", datatype="FP32", shape=(*item_text, -1)),
        )

    def load(self, *, tensors: StreamedTensors | None = None) -> None:
        from tokenizers import Tokenizer

        root = self.config.local_source()
        self.device = pick_device(self.config.device)
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
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        streamed = streamed_file(tensors, "model.safetensors")
        state = load_safetensors(root / "model.safetensors", self.device, streamed=streamed)
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        model = load_module(
            lambda: BertEncoder(bert_config),
            state,
            device=self.device,
            strict=False,  # a checkpoint's pooler and position ids are not needed
            init_missing=False,
            what="BertEncoder",
        )
        assert isinstance(model, BertEncoder)
        self.model = model
        self.tokenizer = tokenizer
        spec = self.outputs[0]
        if not self.config.outputs:
            self.outputs = (
                spec.model_copy(update={"shape": (*spec.shape[:-1], bert_config.hidden_size)}),
            )

    def predict(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self.model is not None, "predict before load"
        text = inputs[self.inputs[0].name].array
        lead_shape = text.shape
        texts = []
        for item in text.reshape(-1):
            try:
                texts.append(item.decode("utf-8") if isinstance(item, bytes) else str(item))
            except UnicodeDecodeError:
                raise InvalidInput("input text holds bytes that are not UTF-8") from None
        if not texts:
            hidden = self.model.config.hidden_size
            empty = np.zeros((*lead_shape, hidden), dtype=np.float32)
            return {self.outputs[0].name: Tensor(self.outputs[0].name, "FP32", empty)}
        encoded = self.tokenizer.encode_batch(texts)
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

    def warmup_inputs(self) -> dict[str, Tensor] | None:
        text = np.array([b"warm up"], dtype=object)
        return {self.inputs[0].name: Tensor(self.inputs[0].name, "BYTES", text)}

    def unload(self) -> None:
        self.model = None
        self.tokenizer = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
