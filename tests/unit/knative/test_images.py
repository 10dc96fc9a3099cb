"""The Dockerfiles: multi-stage, non-root, no compilers in the final stage, no weights baked in,
and the activator image without torch. (No container engine runs here: this reads them.)"""

from __future__ import annotations

import re

import pytest

from tests.servers import ROOT

DOCKERFILES = sorted((ROOT / "templates").glob("Dockerfile.*"))


def final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.M)[-1]


def test_there_are_three_images() -> None:
    names = {p.name for p in DOCKERFILES}
    assert names == {"Dockerfile.runtime-cpu", "Dockerfile.runtime-cuda", "Dockerfile.activator"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_non_root_and_lean(path: object) -> None:
    text = path.read_text()  # type: ignore[attr-defined]
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2
    final = final_stage(text)
    assert "COPY --from=build" in final
    assert re.search(r"^USER 10001$", final, flags=re.M)
    assert 'ENTRYPOINT ["ember"]' in final
    for forbidden in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert forbidden not in final, forbidden
    assert not re.search(r"^(COPY|ADD) .*(weights|\.safetensors|\.bin)", text, flags=re.M)


def test_the_activator_image_has_no_torch() -> None:
    text = (ROOT / "templates" / "Dockerfile.activator").read_text()
    assert "--no-deps ." in text and "torch" not in text.replace("No torch", "")
