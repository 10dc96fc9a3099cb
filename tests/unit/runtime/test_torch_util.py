"""Weights handed from the stream to a handler, and adopted without a copy when they fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from runtime.handlers.base import HandlerLoadError
from runtime.handlers.torch_util import adopts, load_safetensors, load_state, streamed_file


def test_streamed_tensors_are_taken_instead_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    streamed = {"w": torch.ones(3)}
    assert load_safetensors(path, "cpu", streamed=streamed)["w"] is streamed["w"]
    assert torch.equal(load_safetensors(path, "cpu")["w"], torch.zeros(3))


def test_streamed_files_are_found_by_their_path_in_the_model_directory() -> None:
    file = {"w": torch.ones(1)}
    tensors = {"model.safetensors": file, "sub/b.safetensors": {}}
    assert streamed_file(tensors, "model.safetensors") is file
    assert streamed_file(tensors, "./model.safetensors") is file
    assert streamed_file(tensors, "sub/b.safetensors") == {}
    assert streamed_file(tensors, "other.safetensors") is None
    assert streamed_file(None, "model.safetensors") is None


def test_a_corrupt_file_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\0\0\0\0\0\0\0{not json}")
    with pytest.raises(HandlerLoadError, match="cannot read weights"):
        load_safetensors(path, "cpu")


class _Exploit:
    """Unpickling this would create a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "model.pt"])
def test_a_pickle_is_refused_and_never_unpickled(tmp_path: Path, name: str) -> None:
    """Weights are data: only safetensors is read, whatever the file is called."""
    marker = tmp_path / "pwned"
    path = tmp_path / name
    torch.save({"w": torch.zeros(3), "x": _Exploit(marker)}, str(path))  # a zip of pickles
    with pytest.raises(HandlerLoadError, match="cannot read weights"):
        load_safetensors(path, "cpu")
    import pickle

    path.write_bytes(pickle.dumps(_Exploit(marker)))  # a bare pickle
    with pytest.raises(HandlerLoadError, match="cannot read weights"):
        load_safetensors(path, "cpu")
    assert not marker.exists()


def test_fitting_weights_are_adopted_not_copied() -> None:
    module = torch.nn.Linear(4, 2)
    state = {"weight": torch.randn(2, 4), "bias": torch.randn(2)}
    load_state(module, state, strict=True)
    assert module.weight.data_ptr() == state["weight"].data_ptr()


def test_a_cast_or_tied_weights_take_the_copying_path() -> None:
    module = torch.nn.Linear(4, 2)
    half = {"weight": torch.randn(2, 4, dtype=torch.float16), "bias": torch.randn(2)}
    load_state(module, half, strict=True)
    assert module.weight.dtype == torch.float32  # cast into the module's own parameter
    assert torch.equal(module.weight, half["weight"].float())

    tied = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    tied[1].weight = tied[0].weight
    new = torch.randn(5, 3)
    load_state(tied, {"0.weight": new}, strict=False)
    assert tied[1].weight is tied[0].weight and torch.equal(tied[1].weight, new)  # still tied


def test_ties_between_meta_parameters_are_told_by_identity() -> None:
    """Meta tensors have no storage (every data_ptr is 0): identity tells ties apart."""
    with torch.device("meta"):
        separate = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
        tied = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    tied[1].weight = tied[0].weight
    assert adopts(separate, {"0.weight": torch.randn(3, 3)})
    assert not adopts(tied, {"0.weight": torch.randn(5, 3)})
