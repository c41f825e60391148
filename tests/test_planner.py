"""The optimal planner against brute force on random DAGs with random costs, and its speed."""

from __future__ import annotations

import itertools
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hyinf.graph.ir import Graph, Node, Op
from hyinf.planner.costs import GraphCosts, NodeCosts, plan_cost
from hyinf.planner.heuristic import single_switch_plan
from hyinf.planner.optimal import optimal_plan
from hyinf.planner.plan import Mode, Plan


def random_problem(nodes: int, seed: int) -> tuple[Graph, GraphCosts]:
    """A random DAG (branches, joins, fan-out) with random costs; some nodes fixed full, some pools that
    can only be incremental with an incremental input."""
    rng = np.random.default_rng(seed)
    graph_nodes = [Node("x", Op.INPUT, (), (1, 3, 8, 8), (2, 3))]
    costs: dict[str, NodeCosts] = {}
    follow: dict[str, str] = {}
    for i in range(1, nodes):
        names = [n.name for n in graph_nodes]
        inputs = tuple(sorted(set(rng.choice(names, size=min(len(names), int(rng.integers(1, 3))), replace=False).tolist())))
        name = f"n{i}"
        graph_nodes.append(Node(name, Op.POINTWISE, inputs, (1, 3, 8, 8), (2, 3)))
        kind = rng.random()
        full = float(rng.uniform(0.1, 10))
        if kind < 0.15:
            costs[name] = NodeCosts(full)  # must be full
        else:
            costs[name] = NodeCosts(full, float(rng.uniform(0.1, 10)), float(rng.uniform(0, 3)), float(rng.uniform(0, 3)))
            if kind < 0.25:
                follow[name] = inputs[0]
    costs["x"] = NodeCosts(float(rng.uniform(0.1, 2)), float(rng.uniform(0.1, 2)), float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
    return Graph(tuple(graph_nodes), "x", graph_nodes[-1].name), GraphCosts(costs, follow)


def brute_force(graph: Graph, costs: GraphCosts) -> float:
    choice = [name for name in costs.nodes if costs.choosable(name)]
    best = np.inf
    for labels in itertools.product((Mode.INCREMENTAL, Mode.FULL), repeat=len(choice)):
        best = min(best, plan_cost(graph, costs, Plan(dict(zip(choice, labels)), Mode.FULL)))
    return best


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 11), st.integers(0, 2**32 - 1))
def test_optimal_equals_brute_force(nodes: int, seed: int) -> None:
    graph, costs = random_problem(nodes, seed)
    plan = optimal_plan(graph, costs)
    cost = plan_cost(graph, costs, plan)
    assert cost <= brute_force(graph, costs) * (1 + 1e-6) + 1e-9
    for other in (Plan.uniform(Mode.INCREMENTAL), Plan.uniform(Mode.FULL), single_switch_plan(graph, costs)):
        assert cost <= plan_cost(graph, costs, other) * (1 + 1e-6) + 1e-9


def test_pasting_once_for_many_full_consumers() -> None:
    """An incremental node read by three full nodes pays one paste, and the planner knows it."""
    graph = Graph((Node("x", Op.INPUT, (), (1, 1, 4, 4), (2, 3)), *(Node(f"c{i}", Op.POINTWISE, ("x",), (1, 1, 4, 4), (2, 3)) for i in range(3))), "x", "c2")
    costs = GraphCosts({"x": NodeCosts(full=5.0, incremental=1.0, to_full=2.0), **{f"c{i}": NodeCosts(full=1.0, incremental=3.0) for i in range(3)}}, {})
    plan = optimal_plan(graph, costs)
    assert plan.mode("x") is Mode.INCREMENTAL and all(plan.mode(f"c{i}") is Mode.FULL for i in range(3))
    assert plan_cost(graph, costs, plan) == 1.0 + 2.0 + 3 * 1.0


def test_large_graphs_plan_in_well_under_a_second() -> None:
    graph, costs = random_problem(1500, seed=7)
    start = time.perf_counter()
    plan = optimal_plan(graph, costs)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert plan_cost(graph, costs, plan) <= plan_cost(graph, costs, Plan.uniform(Mode.INCREMENTAL))
