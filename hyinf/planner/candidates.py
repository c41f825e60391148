"""Plans near the cost model's optimum, for choosing one by measurement (`hyinf plan --measure`).

Where a cost model misses, it mostly misses how incremental evaluation compares with full evaluation on
its backend (windows gathered and reordered, kernels fused or not inside a model), so the alternatives
are the optimal plans were every incremental cost that much higher or lower: each is the best plan
under one consistent error of the model. Pure, like the planners.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from hyinf.graph.ir import Graph
from hyinf.planner.blocks import STRATEGIES, BlockPlan
from hyinf.planner.costs import GraphCosts, plan_cost
from hyinf.planner.plan import Mode

#: Factors on every incremental cost, the model's own (1) first: the measured 2-5% spread between
#: the plans they give on resnet18 and resnet50 on ORT came from factors up to 1.6 either way.
WEIGHTS = (1.0, 0.8, 1.25, 0.6, 1.6)


def weighted(costs: GraphCosts, weight: float) -> GraphCosts:
    """`costs` with every incremental cost multiplied by `weight`."""
    nodes = {name: c if c.incremental is None else dataclasses.replace(c, incremental=c.incremental * weight)
             for name, c in costs.nodes.items()}
    return GraphCosts(nodes, costs.must_follow)


def signature(graph: Graph, blocks: Sequence[BlockPlan]) -> tuple[frozenset[str], ...]:
    """What a run of the blocks depends on: the nodes each block evaluates incrementally."""
    return tuple(frozenset(n for n in b.costs.nodes if b.costs.choosable(n) and b.plan.mode(n) is Mode.INCREMENTAL)
                 for b in blocks)


def candidate_plans(graph: Graph, blocks: Sequence[BlockPlan], strategy: str = "optimal",
                    weights: Sequence[float] = WEIGHTS) -> list[tuple[float, list[BlockPlan]]]:
    """(weight, blocks) of each distinct plan `strategy` makes under `weights` of `blocks`' costs, in
    the order of `weights`; each block's `predicted["plan"]` is its plan's cost under the model as fitted."""
    planner = STRATEGIES[strategy]
    out: list[tuple[float, list[BlockPlan]]] = []
    seen: set[tuple[frozenset[str], ...]] = set()
    for weight in weights:
        planned = []
        for b in blocks:
            plan = b.plan if weight == 1 else planner(graph, weighted(b.costs, weight))
            predicted = {**b.predicted, "plan": plan_cost(graph, b.costs, plan) * len(b.block)}
            planned.append(dataclasses.replace(b, plan=plan, predicted=predicted))
        key = signature(graph, planned)
        if key not in seen:
            seen.add(key)
            out.append((weight, planned))
    return out
