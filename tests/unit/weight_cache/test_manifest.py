"""A manifest is untrusted input: paths that are not plain relative file paths, the local tier's
own names, duplicates and a file that is also a directory are refused when it is read, each with
one line saying why; a safetensors index is checked against the file's own header on dtype, shape
and offsets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from weight_cache.errors import CorruptCheckpoint
from weight_cache.manifest import Manifest, SafetensorsEntry, path_problem, reserved_name
from weight_cache.safetensors_format import SafetensorsIndex, TensorInfo

SHA = "0" * 64


def file(path: str, size: int = 3, **extra: Any) -> dict[str, Any]:
    return {"path": path, "size": size, "etag": '"e"', "sha256": SHA, **extra}


def load(*files: dict[str, Any]) -> Manifest:
    return Manifest.loads(
        json.dumps({"format": 2, "files": list(files)}).encode(), where="s3://b/m"
    )


def refused(*files: dict[str, Any]) -> str:
    with pytest.raises(CorruptCheckpoint) as info:
        load(*files)
    message = str(info.value)
    assert "\n" not in message and message.startswith("s3://b/m: ")
    return message


def test_a_plain_manifest_loads() -> None:
    manifest = load(file("model.safetensors"), file("sub/vocab.txt"), file("a.b/c-d_e"))
    assert [f.path for f in manifest.files] == ["model.safetensors", "sub/vocab.txt", "a.b/c-d_e"]


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "is empty"),
        (".", "not a plain relative path"),
        ("./model.safetensors", "not a plain relative path"),
        ("a//b", "not a plain relative path"),
        ("a/", "not a plain relative path"),
        ("../x", "not a plain relative path"),
        ("a/../../x", "not a plain relative path"),
        ("/etc/passwd", "is absolute"),
        ("a\0b", "NUL or control character"),
        ("a\nb", "NUL or control character"),
        ("..\\..\\x", "backslash"),
        ("sub\\model.safetensors", "backslash"),
        ("x" * 256, "longer than 255 bytes"),
        ("/".join(["d"] * 2100), "longer than 4096 bytes"),
        (".ember-complete", "keeps for itself"),
        ("sub/.ember-complete", "keeps for itself"),
        ("ember-manifest.json", "keeps for itself"),
        ("model.safetensors.partial", "keeps for itself"),
        (".ember-complete.partial", "keeps for itself"),
        ("x.partial/model.safetensors", "keeps for itself"),
    ],
)
def test_unsafe_or_reserved_paths_are_refused(path: str, why: str) -> None:
    message = refused(file("config.json"), file(path))
    assert why in message and repr(path) in message


def test_the_tiers_names_are_reserved() -> None:
    assert reserved_name(".ember-complete") and reserved_name("ember-manifest.json")
    assert reserved_name("model.safetensors.partial") and not reserved_name("partial")
    assert path_problem("sub/model.safetensors") is None


def test_a_file_that_is_also_a_directory_is_refused() -> None:
    message = refused(file("a"), file("a/b"))
    assert "both as a file and as the directory of 'a/b'" in message
    assert "'x/y'" in refused(file("x/y/z"), file("x/y"))


def test_a_path_named_twice_is_refused() -> None:
    assert "names 'config.json' twice" in refused(file("config.json"), file("config.json", 4))


def test_a_malformed_manifest_says_so_in_one_line() -> None:
    assert "files.0.size" in refused(file("x", size=-1))
    assert "files.0.path" in refused({"path": 3, "size": 1, "etag": "e", "sha256": SHA})
    assert "and 1 more" in refused({"size": 1, "etag": "e", "sha256": SHA, "extra": 1})
    with pytest.raises(CorruptCheckpoint, match="not a valid Ember manifest"):
        Manifest.loads(b"{nope", where="s3://b/m")


def test_a_safetensors_index_that_cannot_describe_its_file_is_refused() -> None:
    index = {"header_bytes": 16, "data_bytes": 8, "tensors": {}}
    assert "16 header and 8 data bytes for a file of 30" in refused(
        file("m.safetensors", size=30, safetensors=index)
    )
    tiny = {"header_bytes": 4, "data_bytes": 0, "tensors": {}}
    refused(file("m.safetensors", size=4, safetensors=tiny))
    load(file("m.safetensors", size=24, safetensors=index))


def entry(**tensors: tuple[str, list[int], tuple[int, int]]) -> SafetensorsEntry:
    return SafetensorsEntry.model_validate(
        {
            "header_bytes": 100,
            "data_bytes": 24,
            "tensors": {
                name: {"dtype": dtype, "shape": shape, "offsets": list(offsets)}
                for name, (dtype, shape, offsets) in tensors.items()
            },
        }
    )


HEADER = SafetensorsIndex(
    100,
    24,
    (TensorInfo("w", "F32", (2, 2), 100, 116), TensorInfo("b", "F32", (2,), 116, 124)),
    {},
)


def test_the_index_must_match_the_header_on_dtype_shape_and_offsets() -> None:
    same = entry(w=("F32", [2, 2], (100, 116)), b=("F32", [2], (116, 124)))
    same.check_header(HEADER, where="m")
    cases = {
        "tensor 'w' has dtype F32 in the file's header, I32 in the manifest": entry(
            w=("I32", [2, 2], (100, 116)), b=("F32", [2], (116, 124))
        ),
        "tensor 'w' has shape [2, 2] in the file's header, [4] in the manifest": entry(
            w=("F32", [4], (100, 116)), b=("F32", [2], (116, 124))
        ),
        "tensor 'b' has offsets [116, 124] in the file's header, [120, 128]": entry(
            w=("F32", [2, 2], (100, 116)), b=("F32", [2], (120, 128))
        ),
        "tensor 'b' is missing from the manifest": entry(w=("F32", [2, 2], (100, 116))),
    }
    for message, manifest in cases.items():
        with pytest.raises(CorruptCheckpoint, match=message.replace("[", r"\[")):
            manifest.check_header(HEADER, where="m")
    moved = SafetensorsEntry.model_validate({**same.model_dump(), "header_bytes": 96})
    with pytest.raises(CorruptCheckpoint, match="the header takes 100 bytes"):
        moved.check_header(HEADER, where="m")
