"""``ember cache`` on the local tier and against a store that trickles, as a user runs it:
evict takes entry keys or model URIs and refuses anything else, deleting nothing; an entry in use
is never evicted; a pull from an endpoint that trickles gives up in one line, with the deadline
from a flag or the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_model_dir
from tests.trickle import TrickleServer
from weight_cache.tier import LocalTier


def ember(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def everything(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def pulled(tmp_path: Path) -> tuple[Path, str, str]:
    """A model pulled from a directory store into a tier: (tier, the store's URI, the key)."""
    src = make_model_dir(tmp_path / "src", mb=0.1)
    uri = f"file://{tmp_path}/bucket"
    assert ember("cache", "push", str(src), uri).returncode == 0
    tier = tmp_path / "tier"
    done = ember("cache", "pull", uri, "--cache-dir", str(tier))
    assert done.returncode == 0, done.stderr
    return tier, uri, Path(done.stdout.strip()).name


@pytest.mark.parametrize("name", ["../x", "", ".", "/abs", "../../x", "entries", "ls"])
def test_evict_refuses_what_is_not_an_entry_and_deletes_nothing(
    tmp_path: Path, pulled: tuple[Path, str, str], name: str
) -> None:
    tier, _uri, key = pulled
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious").write_text("keep me")
    before = everything(tmp_path)
    done = ember("cache", "evict", name, "--cache-dir", str(tier))
    assert done.returncode == 1
    assert "neither an entry key" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    # a good key beside a bad name: still nothing goes
    both = ember("cache", "evict", key, name, "--cache-dir", str(tier))
    assert both.returncode == 1 and "neither an entry key" in both.stderr
    assert everything(tmp_path) == before


def test_evict_by_key_or_by_uri(pulled: tuple[Path, str, str]) -> None:
    tier, uri, key = pulled
    unknown = ember("cache", "evict", "f" * 32, "--cache-dir", str(tier))
    assert unknown.returncode == 1 and f"no entry {'f' * 32}" in unknown.stderr
    assert [e.key for e in LocalTier(tier).entries()] == [key]
    by_uri = ember("cache", "evict", uri, "--cache-dir", str(tier))
    assert by_uri.returncode == 0 and "evicted 1 entries" in by_uri.stdout
    assert LocalTier(tier).entries() == []
    gone = ember("cache", "evict", key, "--cache-dir", str(tier))
    assert gone.returncode == 1 and "no entry" in gone.stderr


async def test_an_entry_in_use_is_not_evicted(pulled: tuple[Path, str, str]) -> None:
    tier, _uri, key = pulled
    held = await LocalTier(tier).lock(key, shared=True)  # as a replica serving from it holds it
    try:
        for how in ([key], ["--all"]):
            done = ember("cache", "evict", *how, "--cache-dir", str(tier))
            assert done.returncode == 1 and f"in use by another process, not evicted: {key}" in (
                done.stderr
            )
        assert [e.key for e in LocalTier(tier).entries()] == [key]
    finally:
        held.release()
    assert ember("cache", "evict", key, "--cache-dir", str(tier)).returncode == 0


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    with TrickleServer(b"{}" * 2048, interval_s=0.1) as server:
        yield server


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_pull_from_a_trickling_endpoint_gives_up(
    tmp_path: Path, trickle: TrickleServer, how: str
) -> None:
    env = {
        "AWS_ENDPOINT_URL": trickle.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    args = ["cache", "pull", "s3://b/m", "--cache-dir", str(tmp_path / "tier")]
    if how == "flag":
        args += ["--range-deadline-s", "1.5"]
    else:
        env["EMBER_STORE_RANGE_DEADLINE_S"] = "1.5"
    started = time.monotonic()
    done = ember(*args, env=env)
    assert time.monotonic() - started < 60
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "ember-manifest.json: bytes 0-4095 did not arrive within the 1.5 s range" in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--range-deadline-s", "0"], {}, "positive number of seconds"),
        (["--min-rate-kib-s", "-5"], {}, "0 (off) or positive"),
        ([], {"EMBER_STORE_MIN_RATE_KIB_S": "lots"}, "EMBER_STORE_MIN_RATE_KIB_S='lots'"),
    ],
)
def test_limits_out_of_range_are_one_line(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = ember("cache", "pull", "s3://b/m", *args, env=env)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr


def test_pull_links_the_model_at_a_fixed_path(tmp_path: Path) -> None:
    """What a command engine's init container runs on Knative: the model into the tier, and a
    link its engine reads as {weights}; a later pull of another model re-points it whole."""
    uris = []
    for seed in (0, 1):
        src = make_model_dir(tmp_path / f"src{seed}", mb=0.1, seed=seed)
        uris.append(f"file://{tmp_path}/bucket{seed}")
        assert ember("cache", "push", str(src), uris[-1]).returncode == 0
    tier, link = tmp_path / "tier", tmp_path / "pod" / "weights"
    pulls = [
        ember("cache", "pull", uri, "--cache-dir", str(tier), "--link", str(link)) for uri in uris
    ]
    assert all(done.returncode == 0 for done in pulls), pulls[0].stderr
    paths = [Path(done.stdout.strip()) for done in pulls]
    assert link.is_symlink() and link.resolve() == paths[1].resolve()
    assert (link / "config.json").read_text() == (tmp_path / "src1" / "config.json").read_text()
    assert sorted(p.name for p in link.parent.iterdir()) == ["weights"]  # no partial left
    (tmp_path / "pod" / "dir").mkdir()
    refused = ember("cache", "pull", uris[0], "--cache-dir", str(tier), "--link",
                    str(tmp_path / "pod" / "dir"))  # fmt: skip
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert f"cannot link {tmp_path / 'pod' / 'dir'}" in refused.stderr


def test_pull_resolves_a_hub_model_through_the_hugging_face_cache(tmp_path: Path) -> None:
    from tests.fixtures.hf_cache import hf_cache

    src = make_model_dir(tmp_path / "src", mb=0.1)
    snapshot = hf_cache(tmp_path / "hub", "org/tiny", src)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    link = tmp_path / "pod" / "weights"
    done = ember("cache", "pull", "hf://org/tiny", "--link", str(link), env=env)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == snapshot
    assert link.resolve() == snapshot.resolve()
    assert (link / "config.json").is_file()
