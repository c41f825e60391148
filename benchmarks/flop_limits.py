"""How far exact occlusion can go: the FLOPs each evaluation computes and the speedups they permit.

For every model of the suite CSV, the FLOPs of all occluded images (patch and stride as in the
suite) when evaluated

* in full (naive re-inference);
* with one window size for the whole grid (the suite's floor);
* with one window size per block of positions (what hyinf's incremental evaluation executes);
* with every position's own changed rows and columns (no exact evaluation computes less),

and, from the same CSV row (one machine, one run): the rate all-incremental evaluation achieved on
the FLOPs it executes, and two limits at the machine's dense matmul rate. A hybrid plan computes at
least the block-window FLOPs (a full node computes its whole maps), so it can beat all-incremental
by at most matmul rate / incremental rate. An exact method computes at least the own-window FLOPs,
so it can beat captum by at most captum's time / (those FLOPs / matmul rate). Usage (after suite.py):

    python benchmarks/flop_limits.py --csv docs/suite_cpu_stride8.csv --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine_speed import report
from suite import build, read_csv

from hyinf.graph.flops import exact_window_flops, full_flops, plan_flops
from hyinf.graph.geometry import OcclusionGrid, changed_regions, position_blocks
from hyinf.graph.torch_frontend import trace_torch
from hyinf.runtime.engine import windowable


def counts(name: str, patch: int, stride: int) -> tuple[float, float, float, float]:
    """(full, one window, block windows, own windows) FLOPs of every occluded image of `name`'s grid."""
    model, size = build(name)
    graph = trace_torch(model, (1, 3, size, size)).graph
    grid = OcclusionGrid.make((size, size), patch, stride)
    windowed = {n.name for n in graph.nodes if windowable(n)}
    uniform = plan_flops(graph, changed_regions(graph, grid), windowed) * len(grid)
    blocks = sum(plan_flops(graph, changed_regions(graph, b), windowed) * len(b) for b in position_blocks(graph, grid))
    return full_flops(graph) * len(grid), uniform, blocks, exact_window_flops(graph, grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, required=True, help="a suite CSV (its models, captum times and matmul rates)")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--write", type=Path, help="replace the flop-limits section of this markdown file")
    args = parser.parse_args()
    lines = [
        (f"Patch {args.patch}, stride {args.stride}. TFLOP of all occluded images; times and rates from the same suite rows "
        "(one machine, one run each). 'incremental rate': block-window FLOPs / all-incremental's median time. "
        "Limits at the dense matmul rate: a hybrid plan computes at least the block-window FLOPs, so "
        "'hybrid over incremental, limit' = matmul rate / incremental rate; an exact method computes at least "
        "the own-window FLOPs, so 'exact limit over captum' = captum's time / (own-window FLOPs / matmul rate).\n"),
        ("| model | full | one window | block windows | own windows | matmul (GFLOP/s) | incremental rate (GFLOP/s) | "
        "hybrid over incremental | hybrid over incremental, limit | best hybrid over captum | exact limit over captum |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in read_csv(args.csv):
        full, uniform, blocks, own = counts(row.model, args.patch, args.stride)
        captum, incremental = row.median("captum"), row.median("incremental")
        best = min(row.median(s) for s in ("hybrid", "hybrid-ort") if row.times.get(s))
        lines.append(f"| {row.model} ({row.size}) | {full / 1e12:.2f} | {uniform / 1e12:.3f} | {blocks / 1e12:.3f} | {own / 1e12:.3f} | "
                     f"{row.rate / 1e9:.0f} | {blocks / incremental / 1e9:.0f} | "
                     f"{incremental / row.median('hybrid'):.2f}x | {row.rate * incremental / blocks:.2f}x | "
                     f"{captum / best:.2f}x | {captum / (own / row.rate):.1f}x |")
    report("\n".join(lines) + "\n", args.write, "flop-limits")


if __name__ == "__main__":
    main()
