"""Timing the runtime's own paths: every choosable node of a program in incremental and in full mode,
and the conversions between the two, for one chunk of occlusion positions."""

from __future__ import annotations

from collections import defaultdict

import torch

from hyinf.graph.geometry import Change, OcclusionGrid, changed_regions
from hyinf.graph.ir import Node
from hyinf.planner.plan import Mode, Plan
from hyinf.profiler.cost_model import sample_op
from hyinf.profiler.features import choice_nodes, node_features
from hyinf.profiler.sample import Sample
from hyinf.profiler.timing import Stopwatch, Timing
from hyinf.runtime.engine import CleanImage, Engine, ImageRun, Repr
from hyinf.runtime.program import TorchProgram

Times = dict[tuple[str, str], list[float]]  # (node, kind) -> seconds per repeat


class _TimedRun(ImageRun):
    """An ImageRun that times each node it evaluates, and the conversion of its value to the other mode."""

    def __init__(self, engine: Engine, clean: CleanImage, fill: torch.Tensor, watch: Stopwatch, nodes: set[str]) -> None:
        super().__init__(engine, clean, fill)
        self.watch, self.nodes = watch, nodes
        self.times: Times = defaultdict(list)

    def evaluate(self, node: Node, rep: Repr) -> torch.Tensor:
        value, seconds = self.watch(lambda: super(_TimedRun, self).evaluate(node, rep))
        assert isinstance(value, torch.Tensor)
        if node.name not in self.nodes:
            return value
        kind = "incremental" if rep is Repr.WIN or node.name in self.e.gap_incremental else "full"
        self.times[node.name, kind].append(seconds)
        if node.spatial is not None and self.e.regions[node.name].change is Change.LOCAL:
            self.env[node.name] = value  # the conversions read it from the environment
            if rep is Repr.WIN:
                _, seconds = self.watch(lambda: self.full_value(node.name))
                self.times[node.name, "to_full"].append(seconds)
            else:
                read = self.e.own_read(node.name)
                _, seconds = self.watch(lambda: self.window_value(read))
                self.times[node.name, "to_win"].append(seconds)
        return value


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
    graph, device = program.graph, program.device
    regions = changed_regions(graph, grid)
    nodes = {n.name for n in choice_nodes(graph, regions)}
    watch = watch or Stopwatch(device)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(graph.input_node.shape, generator=generator).to(device)
    clean = CleanImage(program, image)
    fill = torch.zeros(1, graph.input_node.shape[1], 1, 1, device=device)
    n = min(positions, len(grid))
    idx = torch.linspace(0, len(grid) - 1, n).round().long().to(device)  # spread over the grid
    ex = torch.zeros_like(idx)
    runs = [_TimedRun(Engine(program, grid, Plan.uniform(mode)), clean, fill, watch, nodes) for mode in (Mode.INCREMENTAL, Mode.FULL)]
    with torch.inference_mode():
        for repeat in range(warmup + repeats):
            for run in runs:
                if repeat == warmup:
                    run.times.clear()
                run.chunk(ex, idx)
    samples = []
    for run in runs:
        for (name, kind), times in run.times.items():
            node = graph[name]
            features = node_features(graph, node, regions, kind, n)
            samples.append(Sample(source, f"{config}/{name}", kind, sample_op(node.op.value, node.fn), features, Timing(tuple(times))))
    return samples
