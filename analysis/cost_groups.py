"""Which models the cost report bills as one group, and what it knows of a group from ember.yaml.

A group's replicas are one pool named after the group: its ``replica_*`` events name the group,
its members' ``request``, ``sleep`` and ``wake`` events name the member (``sleep`` and ``wake``
also name the ``group``). The report learns who belongs to which group from those ``group``
fields and, when given the stack config (``ember cost-report --config ember.yaml``), from its
``groups:``; where the two disagree the events win (they say what ran). A model neither names is
billed on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from analysis.cost_sleep import LEVELS
from contracts.events import Event, Sleep, Wake
from contracts.stack import StackConfig


@dataclass(frozen=True)
class GroupConfig:
    """A group as the stack config has it: its members and what its replicas are billed as
    (its pool's ``gpu_type``, ``device``, ``price_per_hour``, ``cpus``), for logs whose events do
    not say."""

    members: tuple[str, ...]
    gpu_type: str | None = None
    device: str | None = None
    price_per_hour: float | None = None
    cpus: float | None = None


def from_stack(stack: StackConfig) -> dict[str, GroupConfig]:
    """The groups of a loaded ember.yaml."""
    return {
        name: GroupConfig(
            members=g.members,
            gpu_type=g.pool.gpu_type,
            device=g.pool.device,
            price_per_hour=g.pool.price_per_hour,
            cpus=g.pool.cpus,
        )
        for name, g in stack.groups.items()
    }


def membership(events: Iterable[Event], config: Mapping[str, GroupConfig]) -> dict[str, str]:
    """Each group member's group: the config's, overridden by the events' ``group`` fields."""
    member_of = {member: name for name, g in config.items() for member in g.members}
    for e in events:
        if (
            isinstance(e, Sleep | Wake)
            and e.level in LEVELS  # as the report counts them: a group's, not the admin's
            and e.group is not None
            and e.group != e.model
        ):
            member_of[e.model] = e.group
    # a group is not itself a member (a malformed log must not make a loop)
    return {m: g for m, g in member_of.items() if m not in member_of.values()}
