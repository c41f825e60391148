"""The chain heuristic, kept as a baseline: incremental up to one switch point in topological order,
full after it, the switch placed where the cost model predicts the least total."""

from __future__ import annotations

from hyinf.graph.ir import Graph
from hyinf.planner.costs import GraphCosts, plan_cost
from hyinf.planner.plan import Mode, Plan


def single_switch_plan(graph: Graph, costs: GraphCosts) -> Plan:
    choice = [n.name for n in graph.nodes if n.name in costs.nodes and costs.choosable(n.name)]
    candidates = [
        Plan({name: Mode.INCREMENTAL if i < switch else Mode.FULL for i, name in enumerate(choice)}, Mode.FULL, strategy="heuristic")
        for switch in range(len(choice) + 1)
    ]
    return min(candidates, key=lambda plan: plan_cost(graph, costs, plan))
