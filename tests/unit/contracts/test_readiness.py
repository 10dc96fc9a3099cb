"""The one rule for "a replica's start is over": every expected model serves or failed, and one
serves (:func:`contracts.replica.readiness`), and the vocabulary it is written in."""

from __future__ import annotations

import itertools

import pytest

from contracts.replica import (
    Failed,
    FailureKind,
    ModelState,
    ModelStatus,
    Pending,
    Ready,
    SleepLevel,
    decode,
    encode,
    readiness,
)

READY = ModelStatus("a", ModelState.READY)
ASLEEP = ModelStatus("b", ModelState.SLEEPING, level=SleepLevel.DISK)
FAILED = ModelStatus(
    "c", ModelState.UNAVAILABLE, "load failed: no file", FailureKind.WEIGHTS_MISSING
)
LOADING = ModelStatus("d", ModelState.LOADING, "loading")
UNLOADED = ModelStatus("e", ModelState.UNAVAILABLE, "unloaded")  # no failure: not settled


def test_ready_when_all_serve_or_failed_and_one_serves() -> None:
    got = readiness({s.model: s for s in (READY, ASLEEP, FAILED)}, ["a", "b", "c"])
    assert got == Ready((READY, ASLEEP), (FAILED,))


def test_failed_when_every_model_failed() -> None:
    got = readiness({"c": FAILED}, ["c"])
    assert isinstance(got, Failed) and got.reasons() == "c: load failed: no file"


def test_pending_names_what_it_waits_for() -> None:
    got = readiness({"a": READY, "d": LOADING, "e": UNLOADED}, ["a", "d", "e", "x"])
    assert got == Pending((("d", LOADING), ("e", UNLOADED), ("x", None)))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_combination_follows_the_rule(n: int) -> None:
    kinds = (READY, ASLEEP, FAILED, LOADING, UNLOADED, None)
    for combo in itertools.product(kinds, repeat=n):
        names = [f"m{i}" for i in range(n)]
        statuses = {
            name: ModelStatus(name, s.state, s.reason, s.failure, level=s.level)
            for name, s in zip(names, combo, strict=True)
            if s is not None
        }
        got = readiness(statuses, names)
        given = [statuses.get(name) for name in names]
        if all(s is not None and s.failed for s in given):
            assert isinstance(got, Failed)
        elif all(s is not None and s.settled for s in given):
            assert isinstance(got, Ready) and got.serving
        else:
            assert isinstance(got, Pending)


def test_states_and_levels_are_one_vocabulary() -> None:
    assert [s for s in ModelState if s.serving] == [ModelState.READY, ModelState.SLEEPING]
    assert sorted(SleepLevel, key=lambda level: level.depth) == [SleepLevel.HOST, SleepLevel.DISK]
    line = encode(ASLEEP)
    assert b'"state":"SLEEPING"' in line and b'"level":"disk"' in line
    back = decode(line)
    assert back == ASLEEP and isinstance(back, ModelStatus) and back.level is SleepLevel.DISK
