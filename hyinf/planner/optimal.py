"""The optimal plan under a cost model, for any DAG, as an s-t minimum cut.

Each choosable node gets a vertex; the source side means incremental, the sink side full. Every
cost term is either a unary cost or a penalty on one ordered pair of labels, which makes the
energy submodular, so a minimum cut is an exact minimiser:

* incremental cost of v: edge v -> sink; full cost: edge source -> v;
* cutting windows out of a full producer u for an incremental consumer v: edge v -> u;
* pasting an incremental u's windows for its full consumers, once however many there are: an
  auxiliary vertex a_u ("u's whole maps exist"), edge u -> a_u with the paste cost, and an
  unbreakable edge a_u -> v for every consumer v that may be full;
* a global average pool is incremental only with an incremental input: unbreakable edge pool -> input.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from hyinf.graph.ir import Graph
from hyinf.planner.costs import GraphCosts
from hyinf.planner.plan import Mode, Plan

RESOLUTION = 1e8  # integer capacity units for the sum of all finite costs
INFINITE = 2**30


def optimal_plan(graph: Graph, costs: GraphCosts) -> Plan:
    """The plan of least `plan_cost` (exact, up to a 1e-8 relative rounding of the costs)."""
    choice = [n.name for n in graph.nodes if n.name in costs.nodes and costs.choosable(n.name)]
    if not choice:
        return Plan({}, Mode.FULL, strategy="optimal")
    index = {name: i + 2 for i, name in enumerate(choice)}  # 0: source (incremental), 1: sink (full)
    aux = {name: len(index) + 2 + i for i, name in enumerate(choice)}
    edges: list[tuple[int, int, float]] = []  # (from, to, cost); cost -1: unbreakable

    for name in choice:
        c = costs.nodes[name]
        assert c.incremental is not None
        v = index[name]
        inc, full = c.incremental, c.full
        # Consumers that are always full need this node's whole maps whenever it is incremental.
        fixed_full = [w for w in graph.consumers[name] if w in costs.nodes and w not in index]
        inc += c.to_full if fixed_full else 0.0
        edges += [(v, 1, inc), (0, v, full)]
        for w in graph.consumers[name]:
            if w in index:
                edges.append((index[w], v, c.to_win))  # w incremental, this node full: cut windows
                if not fixed_full:  # (otherwise the paste is paid above already)
                    edges.append((aux[name], index[w], -1))  # w full needs this node's whole maps
        if not fixed_full and any(w in index for w in graph.consumers[name]):
            edges.append((v, aux[name], c.to_full))
        for src in graph[name].inputs:  # producers that are always full: cut windows when this node is incremental
            if src in costs.nodes and src not in index:
                edges.append((v, 1, costs.nodes[src].to_win))
        if name in costs.must_follow and costs.must_follow[name] in index:
            edges.append((v, index[costs.must_follow[name]], -1))

    total = sum(cost for _, _, cost in edges if cost > 0) or 1.0
    scale = RESOLUTION / total
    rows = np.array([a for a, _, _ in edges])
    cols = np.array([b for _, b, _ in edges])
    caps = np.array([INFINITE if cost < 0 else round(cost * scale) for _, _, cost in edges], dtype=np.int64)
    size = len(index) + len(aux) + 2
    capacity = coo_matrix((caps, (rows, cols)), shape=(size, size)).tocsr()  # parallel edges add up
    capacity.data = np.minimum(capacity.data, INFINITE).astype(np.int32)
    flow = maximum_flow(capacity, 0, 1, method="dinic").flow
    residual = (capacity - flow).tocsr()
    residual.data = np.where(residual.data > 0, 1, 0)
    residual.eliminate_zeros()
    reachable = set(breadth_first_order(residual, 0, directed=True, return_predecessors=False).tolist())
    modes = {name: Mode.INCREMENTAL if index[name] in reachable else Mode.FULL for name in choice}
    return Plan(modes, Mode.FULL, strategy="optimal")
