"""The hf-encoder handler's input limits, on a tiny BERT and WordPiece tokenizer built here.

``max_text_chars`` and ``max_request_chars`` are refused before any tokenization (by the handler's
``check_inputs``, which the data plane calls before queueing, and again in ``predict``);
``truncate: false`` refuses a text past ``max_length`` tokens instead of cutting it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from runtime.config import ModelConfig
from runtime.dataplane import DataPlane
from runtime.errors import ConfigError, InvalidInput
from runtime.handlers.bert import BertConfig, BertEncoder
from runtime.handlers.hf_encoder import HFEncoderHandler
from runtime.metrics import RuntimeMetrics
from runtime.protocol import parse_inference_request
from runtime.repository import ModelRepository
from runtime.sources import WeightSources
from runtime.tensors import Tensor

WORDS = ["hello", "world", "scale", "to", "zero", "ä"]
MAX_LENGTH = 8  # tokens, [CLS] and [SEP] included


def tiny_encoder(root: Path) -> Path:
    """A 1-layer BERT with hidden size 8 and a WordPiece tokenizer over ``WORDS``."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(root / "tokenizer.json"))
    raw = {
        "vocab_size": len(vocab),
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 32,
    }
    (root / "config.json").write_text(json.dumps(raw))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_LENGTH}))
    torch.manual_seed(0)
    state = BertEncoder(BertConfig.from_dict(raw)).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "model.safetensors"))
    return root


def config(root: Path, **options: Any) -> ModelConfig:
    return ModelConfig(
        name="enc", handler="hf-encoder", source=str(root), device="cpu", options=options
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


def loaded(model_dir: Path, **options: Any) -> HFEncoderHandler:
    handler = HFEncoderHandler(config(model_dir, **options))
    handler.load()
    return handler


def texts(*items: str | bytes) -> dict[str, Tensor]:
    raw = [t.encode() if isinstance(t, str) else t for t in items]
    array = np.empty(len(raw), dtype=object)
    array[:] = raw
    return {"text": Tensor("text", "BYTES", array)}


class CountingTokenizer:
    """Wraps the real tokenizer and counts the texts it was given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen = 0

    def encode_batch(self, batch: list[str]) -> Any:
        self.seen += len(batch)
        return self.inner.encode_batch(batch)


def test_a_text_over_max_text_chars_is_refused_by_index_before_tokenizing(
    model_dir: Path,
) -> None:
    handler = loaded(model_dir, max_text_chars=10)
    spy = CountingTokenizer(handler.tokenizer)
    handler.tokenizer = spy
    request = texts("hello", "hello world", "zero")  # the second is 11 characters
    for refuse in (handler.check_inputs, handler.predict):
        with pytest.raises(InvalidInput) as info:
            refuse(request)
        assert info.value.message == (
            "input text 1 is longer than this model's limit of 10 characters (max_text_chars)"
        )
    assert spy.seen == 0
    handler.check_inputs(texts("ä" * 10))  # characters, not bytes: 20 bytes of UTF-8 pass
    with pytest.raises(InvalidInput, match="input text 0 is longer"):
        handler.check_inputs(texts("ä" * 11))
    with pytest.raises(InvalidInput, match="input text 0 is longer"):
        handler.check_inputs(texts(b"\xff" * 41))  # past 4 bytes a character: not even decoded
    with pytest.raises(InvalidInput, match="input text 1 holds bytes that are not UTF-8"):
        handler.check_inputs(texts("ok", b"\xff"))


def test_a_request_over_max_request_chars_is_refused(model_dir: Path) -> None:
    handler = loaded(model_dir, max_text_chars=10, max_request_chars=12)
    handler.check_inputs(texts("hello", "hello", "ab"))  # 12: at the limit
    with pytest.raises(InvalidInput) as info:
        handler.check_inputs(texts("hello", "hello", "abc"))
    assert "more than this model's limit of 12 characters" in info.value.message
    assert "max_request_chars" in info.value.message and "0..2" in info.value.message


def test_limits_are_published_and_options_are_checked(model_dir: Path) -> None:
    handler = loaded(model_dir, truncate=False)
    assert handler.input_limits == {
        "max_text_chars": "32768",
        "max_request_chars": "1048576",
        "max_length": str(MAX_LENGTH),
        "truncate": "false",
    }
    with pytest.raises(ConfigError, match="max_text_chars"):
        HFEncoderHandler(config(model_dir, max_text_chars=0))
    with pytest.raises(ConfigError, match="max_text_char"):
        HFEncoderHandler(config(model_dir, max_text_char=10))  # a typo is not ignored


def test_truncate_cuts_a_long_text_by_default(model_dir: Path) -> None:
    handler = loaded(model_dir)
    long = " ".join(["hello"] * 20)  # 22 tokens with [CLS] and [SEP]
    out = handler.predict(texts(long, "hello " * (MAX_LENGTH - 2)))["embedding"].array
    assert out.shape == (2, 8)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # both cut to the same 8 tokens


def test_without_truncate_a_text_past_max_length_is_refused_with_its_count(
    model_dir: Path,
) -> None:
    handler = loaded(model_dir, truncate=False)
    fits = "hello " * (MAX_LENGTH - 2)  # exactly MAX_LENGTH tokens
    assert handler.predict(texts(fits, "zero"))["embedding"].array.shape == (2, 8)
    with pytest.raises(InvalidInput) as info:
        handler.predict(texts("zero", " ".join(["hello"] * 20)))
    assert info.value.message == (
        f"input text 1 is 22 tokens long, over this model's limit of {MAX_LENGTH} "
        "(max_length, counting special tokens); truncate is off"
    )


async def test_the_data_plane_refuses_before_queueing_and_publishes_the_limits(
    model_dir: Path, tmp_path: Path
) -> None:
    metrics = RuntimeMetrics()
    cfg = config(model_dir, max_text_chars=10).model_copy(update={"max_batch_size": 4})
    repo = ModelRepository([cfg], metrics, WeightSources(cache_dir=tmp_path / "cache"))
    await repo.load("enc")
    try:
        dataplane = DataPlane(repo, metrics)
        body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": []}]}
        body["inputs"][0]["data"] = ["hello", "x" * 11]
        with pytest.raises(InvalidInput, match="input text 1 is longer"):
            await dataplane.infer("enc", None, parse_inference_request(body))
        stats = repo.entry("enc").stats.as_dict()
        assert stats["inference_count"] == 0 and stats["execution_count"] == 0  # never queued
        assert dataplane.model_metadata("enc", None)["properties"]["max_text_chars"] == "10"
    finally:
        await repo.aclose()
