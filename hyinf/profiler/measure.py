"""Timing the runtime's own paths: every choosable node of a program in incremental and in full mode,
and the conversions between the two, for one chunk of occlusion positions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hyinf.graph.geometry import Change, OcclusionGrid, Region, changed_regions
from hyinf.graph.ir import Node
from hyinf.planner.plan import Mode, Plan
from hyinf.profiler.cost_model import sample_op
from hyinf.profiler.features import choice_nodes, node_features
from hyinf.profiler.sample import Sample
from hyinf.profiler.timing import Stopwatch, Timing
from hyinf.runtime.engine import CleanImage, Engine, ImageRun, Repr
from hyinf.runtime.program import TorchProgram

Times = dict[tuple[str, str], list[float]]  # (node, kind) -> seconds per repeat


class ProbedRun(ImageRun):
    """An ImageRun that hands each choosable node's evaluation, and the conversion of its value to the
    other mode, to `probe(node, kind, compute)`: the torch profiler times them, the ONNX Runtime
    profiler names them so its trace attributes kernel times to them."""

    def __init__(self, engine: Engine, clean: CleanImage, fill: torch.Tensor, nodes: set[str]) -> None:
        super().__init__(engine, clean, fill)
        self.nodes = nodes

    def probe(self, name: str, kind: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, node: Node, rep: Repr) -> torch.Tensor:
        if node.name not in self.nodes:
            return super().evaluate(node, rep)
        kind = "incremental" if rep is Repr.WIN or node.name in self.e.gap_incremental else "full"
        value = self.probe(node.name, kind, lambda: super(ProbedRun, self).evaluate(node, rep))
        if node.spatial is not None and self.e.regions[node.name].change is Change.LOCAL:
            self.env[node.name] = value  # the conversions read it from the environment
            if rep is Repr.WIN:
                self.probe(node.name, "to_full", lambda: self.full_value(node.name))
            else:
                read = self.e.own_read(node.name)
                self.probe(node.name, "to_win", lambda: self.window_value(read))
        return value


class _TimedRun(ProbedRun):
    """A run that times each probe."""

    def __init__(self, engine: Engine, clean: CleanImage, fill: torch.Tensor, watch: Stopwatch, nodes: set[str]) -> None:
        super().__init__(engine, clean, fill, nodes)
        self.watch = watch
        self.times: Times = defaultdict(list)

    def probe(self, name: str, kind: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        value, seconds = self.watch(compute)
        assert isinstance(value, torch.Tensor)
        self.times[name, kind].append(seconds)
        return value


@dataclass(frozen=True)
class Setup:
    """What a measurement of `program` evaluates: a random clean image and `n` positions spread over the grid."""

    program: TorchProgram
    grid: OcclusionGrid
    regions: dict[str, Region]
    nodes: set[str]  # the choosable nodes: the ones timed
    clean: CleanImage
    fill: torch.Tensor
    idx: torch.Tensor

    @classmethod
    def make(cls, program: TorchProgram, grid: OcclusionGrid, positions: int) -> Setup:
        graph, device = program.graph, program.device
        regions = changed_regions(graph, grid)
        generator = torch.Generator().manual_seed(0)
        image = torch.randn(graph.input_node.shape, generator=generator).to(device)
        fill = torch.zeros(1, graph.input_node.shape[1], 1, 1, device=device)
        idx = torch.linspace(0, len(grid) - 1, min(positions, len(grid))).round().long().to(device)
        return cls(program, grid, regions, {n.name for n in choice_nodes(graph, regions)}, CleanImage(program, image), fill, idx)

    def engines(self) -> list[Engine]:
        """The all-incremental and the all-full engine: between them, every choosable node in both modes."""
        return [Engine(self.program, self.grid, Plan.uniform(mode)) for mode in (Mode.INCREMENTAL, Mode.FULL)]

    def samples(self, times: Times, source: str, config: str) -> list[Sample]:
        graph = self.program.graph
        out = []
        for (name, kind), seconds in times.items():
            node = graph[name]
            features = node_features(graph, node, self.regions, kind, len(self.idx))
            out.append(Sample(source, f"{config}/{name}", kind, sample_op(node.op.value, node.fn), features, Timing(tuple(seconds))))
        return out


def measure_program(
    program: TorchProgram,
    grid: OcclusionGrid,
    *,
    positions: int,
    repeats: int,
    warmup: int = 1,
    source: str,
    config: str,
    watch: Stopwatch | None = None,
) -> list[Sample]:
    """Time every choosable node of `program` for a chunk of `positions` positions of `grid`.

    Incremental and full runs alternate, so drift in the machine's speed hits both alike.
    """
    setup = Setup.make(program, grid, positions)
    watch = watch or Stopwatch(program.device)
    ex = torch.zeros_like(setup.idx)
    runs = [_TimedRun(engine, setup.clean, setup.fill, watch, setup.nodes) for engine in setup.engines()]
    with torch.inference_mode():
        for repeat in range(warmup + repeats):
            for run in runs:
                if repeat == warmup:
                    run.times.clear()
                run.chunk(ex, setup.idx)
    times: Times = {}
    for run in runs:
        times.update(run.times)
    return setup.samples(times, source, config)
