"""One measured cost: an operator in one mode, or one conversion, in one configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hyinf.profiler.timing import Timing

#: What a sample times. incremental/full: computing a node in that mode (reading its inputs included);
#: to_full: pasting a node's windows into whole maps; to_win: cutting windows out of whole maps.
KINDS = ("incremental", "full", "to_full", "to_win")


@dataclass(frozen=True)
class Sample:
    source: str  # sweep | model
    config: str  # configuration id; a configuration's samples are held out together
    kind: str
    op: str
    features: Mapping[str, float]
    timing: Timing
