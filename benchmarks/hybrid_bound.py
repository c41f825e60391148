"""What any plan can gain over all-incremental evaluation, from every node's measured times.

A plan picks, per node and block of positions, incremental or full evaluation, and pays for the
conversions where the mode changes. Whatever it picks, a node costs at least the faster of its two
modes, conversions cost at least nothing, and the nodes no plan can choose for cost the same in
every plan. So a plan beats all-incremental by at most about

    sum over blocks and choosable nodes of t_incremental / sum of min(t_incremental, t_full),

with each node timed by the profiler's own measurement (`hyinf.profiler.measure.measure_program`: each node in
both modes on a chunk of positions spread over the block, alternating, median of the repeats),
scaled by each block's positions. Timed in isolation on chunks of 32 positions, the nodes do not run
exactly as in a whole run, so this is an estimate of the ceiling, not a proof. Beside it: the suite's measured hybrid over all-incremental (same
CSV as flop_limits.py), and the share of all-incremental's time the choosable nodes account for.
Usage (after suite.py):

    python benchmarks/hybrid_bound.py --csv docs/suite_cpu_stride8.csv --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from engine_speed import machine, report
from suite import build, read_csv

from hyinf.graph.geometry import OcclusionGrid, position_blocks
from hyinf.graph.torch_frontend import trace_torch
from hyinf.profiler.measure import measure_program

POSITIONS = 32  # positions per timed chunk, as `hyinf profile --model` times them


def node_times(name: str, patch: int, stride: int, repeats: int) -> tuple[float, float, int]:
    """(all-incremental, best per node) seconds of the choosable nodes over the whole grid, and the blocks."""
    model, size = build(name)
    program = trace_torch(model, (1, 3, size, size))
    grid = OcclusionGrid.make((size, size), patch, stride)
    incremental = best = 0.0
    blocks = position_blocks(program.graph, grid)
    for k, block in enumerate(blocks):
        samples = measure_program(program, block, positions=POSITIONS, repeats=repeats, source="bound", config=f"{name}/{k}")
        per_node: dict[str, dict[str, float]] = defaultdict(dict)
        for s in samples:
            per_node[s.config][s.kind] = s.timing.median / s.features["positions"]  # seconds per position
        for times in per_node.values():
            if "incremental" in times:  # nodes that must stay full cost the same in every plan
                incremental += times["incremental"] * len(block)
                # a node evaluated on windows in both runs (between incremental neighbours) has no full time
                best += min(times["incremental"], times.get("full", times["incremental"])) * len(block)
        print(f"{name} block {k + 1}/{len(blocks)}: {incremental:.2f} s vs {best:.2f} s so far", file=sys.stderr, flush=True)
    return incremental, best, len(blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, required=True, help="a suite CSV (its models and measured hybrid / incremental times)")
    parser.add_argument("--models", nargs="*", help="only these of the CSV's models")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, help="replace the hybrid-bound section of this markdown file")
    args = parser.parse_args()
    torch.manual_seed(0)
    lines = [
        (f"Machine: {machine()}. Patch {args.patch}, stride {args.stride}; every choosable node of every block timed in both modes "
         f"({POSITIONS} positions per chunk, median of {args.repeats} alternating repeats), scaled to the block's positions. "
         "'choosable, incremental' and 'choosable, best mode' sum those nodes' times over the grid; their ratio estimates the most "
         "any plan can gain over all-incremental. 'share' = choosable nodes' all-incremental time / the suite's all-incremental time.\n"),
        "| model | blocks | choosable, incremental (s) | choosable, best mode (s) | estimate: best plan over incremental | share | suite: hybrid over incremental |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in read_csv(args.csv):
        if args.models and row.model not in args.models:
            continue
        incremental, best, blocks = node_times(row.model, args.patch, args.stride, args.repeats)
        measured = row.median("incremental") / row.median("hybrid")
        lines.append(f"| {row.model} ({row.size}) | {blocks} | {incremental:.2f} | {best:.2f} | {incremental / best:.2f}x | "
                     f"{incremental / row.median('incremental'):.0%} | {measured:.2f}x |")
        print(lines[-1], file=sys.stderr, flush=True)
    report("\n".join(lines) + "\n", args.write, "hybrid-bound")


if __name__ == "__main__":
    main()
