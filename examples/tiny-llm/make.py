"""Build the tiny random-weight Llama model Ember's text-generation tests and demo serve.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a built-in text (with a
chat template), the model a Llama-architecture ``LlamaForCausalLM`` built from a small config
with a fixed seed and saved in the Hugging Face layout (config.json, model.safetensors,
tokenizer files). The same seed gives the same files, so tests build it into a temporary folder.

    python examples/tiny-llm/make.py [DIR]     # default: examples/tiny-llm/model
"""

from __future__ import annotations

import sys
from pathlib import Path

TEXT = """\
Ember is a serverless inference runtime. A model nobody is calling costs nothing but its bytes.
The first request wakes it, waits in a queue, and is answered as soon as the weights are ready.
The quick brown fox jumps over the lazy dog. Hello, world! How are you today? I am fine.
Tokens stream to the client one by one; a client that leaves frees its sequence at once.
0 1 2 3 4 5 6 7 8 9 10 100 1000. User: hi. Assistant: hello there, what can I do for you?
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
VOCAB_SIZE = 384
SEED = 1234


def build(out: Path) -> Path:
    """Write the tiny model's files into ``out`` (created); returns ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "model"
    print(build(target))
