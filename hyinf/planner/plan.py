"""A plan: how every node of a graph is evaluated. Plain, frozen data that planners return."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class Mode(enum.StrEnum):
    INCREMENTAL = "incremental"  # compute only each position's changed window
    FULL = "full"  # compute whole maps for every position


@dataclass(frozen=True)
class Plan:
    """A mode per node name; nodes not listed use `default`."""

    modes: Mapping[str, Mode] = field(default_factory=dict)
    default: Mode = Mode.INCREMENTAL
    strategy: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", MappingProxyType({k: Mode(v) for k, v in self.modes.items()}))

    def mode(self, name: str) -> Mode:
        return self.modes.get(name, self.default)

    @classmethod
    def uniform(cls, mode: Mode | str) -> Plan:
        return cls(default=Mode(mode), strategy=f"all-{Mode(mode).value}")
