"""What a model folder holds, said for a human whose safetensors file is not there.

``ember up`` (its check of local sources) and ``ember cache push`` both refuse a folder whose
weights Ember would not load, naming what they found instead: a pickle checkpoint (which can run
code when loaded, so it is never loaded), GGUF, or another ``.safetensors`` file than the one
expected.
"""

from __future__ import annotations

from pathlib import Path

# checkpoints in formats Ember does not load, by their usual suffixes
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def pickle_advice(pickles: list[str]) -> str:
    """The advice for a folder holding pickle checkpoints (``pickles``: their names)."""
    return (
        f"it holds {', '.join(pickles[:6])}: a pickle checkpoint, which Ember does not load (it "
        "can run code); convert it to safetensors (safetensors.torch.save_file of its state "
        "dict, or save_pretrained(..., safe_serialization=True))"
    )


def holds(root: Path, *, weights_option: bool = False) -> str:
    """What a model directory holds, where the safetensors file a handler reads is missing
    (``weights_option``: the handler takes its file's name in ``options.weights``)."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    if not files:
        return "it is empty"
    tensors = [f for f in files if f.endswith(".safetensors")]
    pickles = [f for f in files if f.endswith(PICKLES)]
    shown = ", ".join(files[:6]) + (f" and {len(files) - 6} more" if len(files) > 6 else "")
    if tensors:
        hint = " (name the file in options.weights)" if weights_option else ""
        return f"it holds {', '.join(tensors[:6])}{hint}"
    if pickles:
        return pickle_advice(pickles)
    if any(f.endswith(".gguf") for f in files):
        return (
            f"it holds {shown}: GGUF, which Ember does not load; write the Hugging Face layout "
            "(transformers reads GGUF with gguf_file=..., then save_pretrained)"
        )
    return f"it holds no safetensors file, only {shown}"
