"""Planning a whole occlusion grid: one plan per block of positions (blocks have different changed
regions, so a node may be worth evaluating incrementally in one block and fully in another)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hyinf.graph.fingerprint import graph_fingerprint
from hyinf.graph.geometry import GROUPS_PER_AXIS, OcclusionGrid, changed_regions, position_blocks
from hyinf.graph.ir import Graph
from hyinf.kept import Kept
from hyinf.planner.costs import GraphCosts, folded_nodes, plan_cost, predict_costs
from hyinf.planner.heuristic import single_switch_plan
from hyinf.planner.optimal import optimal_plan
from hyinf.planner.plan import Mode, Plan
from hyinf.profiler.cost_model import CostModel

Planner = Callable[[Graph, GraphCosts], Plan]
STRATEGIES: dict[str, Planner] = {"optimal": optimal_plan, "heuristic": single_switch_plan}


@dataclass(frozen=True)
class BlockPlan:
    block: OcclusionGrid
    plan: Plan
    costs: GraphCosts
    predicted: dict[str, float]  # predicted seconds for the block's positions: plan, all-incremental, all-full, heuristic


def plan_grid(graph: Graph, grid: OcclusionGrid, model: CostModel, strategy: str = "optimal", backend: str = "torch", *,
              chunk: int, groups_per_axis: int = GROUPS_PER_AXIS) -> list[BlockPlan]:
    """Plan every block of `grid` (`groups_per_axis` groups of positions per axis) with `strategy` under
    `model`, the cost model of `backend`, for calls of `chunk` positions (`largest_chunk` of the device;
    fewer in a smaller block).

    Kept per process for the last few (graph structure, grid, strategy, cost model) combinations: planning
    vgg16 takes 0.15-0.3 s, 5% of an approximate explanation, and the same inputs give the same plans.
    The model is recognised by identity (`device_costs` gives the same object for the same stored model)
    and held with the plans, so its identity cannot pass to another model while they are kept.
    """
    key = (graph_fingerprint(graph), grid, strategy, id(model), backend, chunk, groups_per_axis)
    return list(_PLANNED.get(key, lambda: (model, _plan_grid(graph, grid, model, strategy, backend, chunk, groups_per_axis)))[1])


_PLANNED: Kept[tuple[CostModel, list[BlockPlan]]] = Kept(8)


def _plan_grid(graph: Graph, grid: OcclusionGrid, model: CostModel, strategy: str, backend: str, chunk: int,
               groups_per_axis: int) -> list[BlockPlan]:
    planner = STRATEGIES[strategy]
    blocks = position_blocks(graph, grid, groups_per_axis)
    out = []
    regions = [changed_regions(graph, b) for b in blocks]
    calls = [min(chunk, len(b)) for b in blocks]
    for block, costs in zip(blocks, predict_costs(graph, regions, model, calls, folded=folded_nodes(graph, backend))):
        plan = planner(graph, costs)
        alternatives = {
            "plan": plan,
            "all-incremental": Plan.uniform(Mode.INCREMENTAL),
            "all-full": Plan.uniform(Mode.FULL),
            "heuristic": plan if strategy == "heuristic" else single_switch_plan(graph, costs),
        }
        predicted = {name: plan_cost(graph, costs, p) * len(block) for name, p in alternatives.items()}
        out.append(BlockPlan(block, plan, costs, predicted))
    return out
