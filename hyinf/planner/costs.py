"""Predicted costs of every node in each mode, and of the conversions between modes, for one block of
positions: the input planners optimise over. Pure given the cost model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hyinf.graph.geometry import Change, Region
from hyinf.graph.ir import Graph, Op
from hyinf.planner.plan import Mode, Plan
from hyinf.profiler.cost_model import CostModel, Row, sample_op
from hyinf.profiler.features import choice_nodes, node_features


@dataclass(frozen=True)
class NodeCosts:
    """Seconds per position. `incremental` is None for nodes that must be evaluated fully."""

    full: float
    incremental: float | None = None
    to_full: float = 0.0  # pasting its windows into whole maps, once, when a full consumer reads it
    to_win: float = 0.0  # cutting windows from its whole maps, per incremental consumer


@dataclass(frozen=True)
class GraphCosts:
    """Costs of the nodes the patch changes; unchanged nodes cost nothing in any plan."""

    nodes: Mapping[str, NodeCosts]
    must_follow: Mapping[str, str]  # node -> input it can only be incremental with (global average pools)

    def choosable(self, name: str) -> bool:
        """Whether the node can be evaluated incrementally at all (a pool only after a choosable input)."""
        if self.nodes[name].incremental is None:
            return False
        follows = self.must_follow.get(name)
        return follows is None or (follows in self.nodes and self.choosable(follows))


#: Pointwise functions ONNX Runtime's CPU optimizer folds into the convolution they follow (batch norm
#: into its weights, activations into its kernel). The cost model times operators alone (docs/ort.md),
#: so on the ort backend these cost nothing where they follow a convolution.
ORT_FOLDED = frozenset({"batch_norm", "relu", "relu6", "hardtanh", "hardsigmoid", "leaky_relu", "sigmoid", "tanh"})


def folded_nodes(graph: Graph, backend: str) -> frozenset[str]:
    """Nodes `backend` folds into a convolution: on ort, chains of ORT_FOLDED functions after a
    convolution, each the only reader of its input."""
    if backend != "ort":
        return frozenset()
    out: set[str] = set()
    for node in graph.nodes:
        if node.op is Op.POINTWISE and node.fn in ORT_FOLDED and len(node.inputs) == 1:
            source = graph[node.inputs[0]]
            if len(graph.consumers.get(source.name, ())) == 1 and (source.op is Op.CONV or source.name in out):
                out.add(node.name)
    return frozenset(out)


def predict_costs(graph: Graph, blocks: Sequence[dict[str, Region]], model: CostModel, positions: Sequence[int],
                  folded: frozenset[str] = frozenset()) -> list[GraphCosts]:
    """Per-position costs of every changed node under `model`, for each block's regions, assuming calls
    of that block's `positions` positions (the runtime's chunk: per-call costs weigh less in larger
    ones); `folded` nodes compute for free (their conversions still cost). All rows go to the model in
    one call (tree models predict in bulk)."""
    rows: list[Row] = []
    per_call: list[float] = []  # each row's positions: its prediction is for one call of that many
    wanted: list[list[tuple[str, tuple[str, ...]]]] = []  # per block: (node, kinds), in row order
    for regions, chunk in zip(blocks, positions, strict=True):
        choice = {n.name for n in choice_nodes(graph, regions)}
        items = []
        for node in graph.nodes:
            change = regions[node.name].change
            if change is Change.UNCHANGED:
                continue
            if node.name not in choice:
                kinds: tuple[str, ...] = ("full",)
            elif change is Change.LOCAL:
                kinds = ("full", "incremental", "to_full", "to_win")
            else:
                kinds = ("full", "incremental")
            op = sample_op(node.op.value, node.fn)
            rows += [(kind, op, node_features(graph, node, regions, kind, chunk)) for kind in kinds]
            per_call += [float(chunk)] * len(kinds)
            items.append((node.name, kinds))
        wanted.append(items)
    seconds = iter((model.predict(rows) / np.array(per_call)).tolist())
    out = []
    for items in wanted:
        nodes: dict[str, NodeCosts] = {}
        follow: dict[str, str] = {}
        for name, kinds in items:
            c = dict(zip(kinds, (next(seconds) for _ in kinds)))
            if name in folded:
                c.update((kind, 0.0) for kind in ("full", "incremental") if kind in c)
            nodes[name] = NodeCosts(c["full"], c.get("incremental"), c.get("to_full", 0.0), c.get("to_win", 0.0))
            if kinds == ("full", "incremental"):  # a global average pool: updated from its input's windows only
                follow[name] = graph[name].inputs[0]
        out.append(GraphCosts(nodes, follow))
    return out


def plan_cost(graph: Graph, costs: GraphCosts, plan: Plan) -> float:
    """Predicted seconds per position of `plan`: node costs, plus a paste for every incremental node
    some full node reads, plus a cut for every full-to-incremental edge."""
    def mode(name: str) -> Mode:
        if not costs.choosable(name):
            return Mode.FULL
        if name in costs.must_follow and mode(costs.must_follow[name]) is Mode.FULL:
            return Mode.FULL
        return plan.mode(name)

    modes = {name: mode(name) for name in costs.nodes}
    total = 0.0
    for name, c in costs.nodes.items():
        total += c.incremental if modes[name] is Mode.INCREMENTAL and c.incremental is not None else c.full
        consumers = [v for v in graph.consumers[name] if v in modes]
        if modes[name] is Mode.INCREMENTAL:
            if any(modes[v] is Mode.FULL for v in consumers):
                total += c.to_full
        else:
            total += c.to_win * sum(modes[v] is Mode.INCREMENTAL and costs.choosable(v) for v in consumers)
    return total
