"""The ranged-read pipeline takes a plain plan: every range lands once, ``arrived`` hears of them
in plan order whatever order they land in, and a failure stops the rest and surfaces."""

from __future__ import annotations

import threading

import pytest

from weight_cache.ranges import Range, Stopped, plan_ranges, read_ranges


def test_a_plan_covers_the_size_in_order() -> None:
    assert plan_ranges(10, 4) == [Range(0, 4), Range(4, 4), Range(8, 2)]
    assert plan_ranges(8, 4) == [Range(0, 4), Range(4, 4)]
    assert plan_ranges(0, 4) == []
    assert Range(8, 2).end == 10
    with pytest.raises(ValueError, match="range_bytes must be positive"):
        plan_ranges(10, 0)


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_ranges_land_in_their_destinations_and_arrive_in_order(concurrency: int) -> None:
    source = bytes(range(256)) * 40
    target = bytearray(len(source))
    # a plain plan: where each range goes is the caller's (here: the same place in a copy)
    plan = plan_ranges(len(source), 97)
    later_first = threading.Barrier(2, timeout=10)  # the first two ranges land in reverse order

    def land(item: Range) -> None:
        if concurrency > 1 and item.offset < 2 * 97:
            if item.offset == 0:
                later_first.wait()
                later_first.wait()
            else:
                later_first.wait()
                target[item.offset : item.end] = source[item.offset : item.end]
                later_first.wait()
                return
        target[item.offset : item.end] = source[item.offset : item.end]

    heard: list[Range] = []

    def arrived(item: Range) -> None:
        assert target[: item.end] == source[: item.end]  # the prefix is there when told
        heard.append(item)

    read_ranges(plan, land, concurrency=concurrency, cancel=threading.Event(), arrived=arrived)
    assert heard == plan and target == source


class Boom(Exception):
    """A range that cannot be read."""


def test_a_failed_range_stops_the_rest_and_surfaces() -> None:
    plan = plan_ranges(100 * 10, 10)
    landed: list[int] = []
    cancel = threading.Event()

    def land(item: Range) -> None:
        if item.offset == 30:
            raise Boom
        landed.append(item.offset)

    with pytest.raises(Boom):
        read_ranges(plan, land, concurrency=2, cancel=cancel)
    assert cancel.is_set()
    assert len(landed) < len(plan) - 1  # the ranges not yet started were dropped


def test_a_cancelled_read_stops_before_its_next_range() -> None:
    cancel = threading.Event()
    landed: list[int] = []

    def land(item: Range) -> None:
        landed.append(item.offset)
        cancel.set()

    with pytest.raises(Stopped):
        read_ranges(plan_ranges(100, 10), land, concurrency=1, cancel=cancel)
    assert landed == [0]
