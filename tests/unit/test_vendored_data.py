"""The vendored test data is complete and unchanged, and a skip that is not the GPU's fails."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import ROOT
from tests.spec import DATA, data_path

MANIFEST = DATA / "MANIFEST.sha256"


def listed() -> dict[str, str]:
    entries = {}
    for line in MANIFEST.read_text().splitlines():
        digest, _, name = line.partition("  ")
        entries[name.removeprefix("./")] = digest
    return entries


def test_every_vendored_file_is_there_and_unchanged() -> None:
    entries = listed()
    assert entries, f"{MANIFEST} lists no files"
    missing = [name for name in entries if not (DATA / name).is_file()]
    assert not missing, f"vendored test data missing: {', '.join(missing)}"
    changed = [
        name
        for name, digest in entries.items()
        if hashlib.sha256((DATA / name).read_bytes()).hexdigest() != digest
    ]
    assert not changed, f"vendored test data changed: {', '.join(changed)}"


def test_every_file_in_the_folder_is_listed() -> None:
    present = {
        p.relative_to(DATA).as_posix() for p in DATA.rglob("*") if p.is_file() and p != MANIFEST
    }
    assert present - set(listed()) == set(), "add new files to tests/data/MANIFEST.sha256"


def test_each_source_has_its_origin_and_licence() -> None:
    for folder in ("specs", "traces"):
        source = data_path(f"{folder}/SOURCE.md").read_text()
        assert "commit" in source
        assert list((DATA / folder).glob("LICENSE*")), f"tests/data/{folder} has no licence file"


def test_a_missing_file_is_an_error_naming_it() -> None:
    with pytest.raises(FileNotFoundError, match=r"tests/data/specs/nope\.yaml"):
        data_path("specs/nope.yaml")


def test_nothing_outside_the_repository_is_read() -> None:
    """Tests and scripts find their data in the clone, not in a folder beside it."""
    hits = subprocess.run(
        [
            "git",
            "grep",
            "-n",
            "-e",
            "EMBER_[S]HARED",
            "-e",
            "[.][.]/shared",
            "--",
            "*.py",
            "*.md",
            "scripts",
            ".ci",
            ":(exclude)tests/data",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert hits.stdout == "", hits.stdout


GPU_SKIPPED = """import pytest

@pytest.mark.skip(reason="needs a CUDA device")
def test_a():
    pass
"""
OTHER_SKIP = """import pytest

def test_a():
    pytest.skip("no spec here")
"""
PASSES = "def test_a():\n    pass\n"


@pytest.mark.parametrize(
    ("body", "code"),
    [(GPU_SKIPPED, 0), (OTHER_SKIP, 1), (PASSES, 0)],
)
def test_a_skip_fails_the_run_unless_it_is_the_gpus(tmp_path: Path, body: str, code: int) -> None:
    (tmp_path / "test_probe.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.skipgate",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == code, done.stdout + done.stderr
    if code:
        assert "test_probe.py::test_a: Skipped: no spec here" in done.stdout
