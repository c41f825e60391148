"""The part of an exported chunk graph that depends on the occlusion positions alone.

A chunk graph computes its gather and paste indices (window rows, validity masks) from the
positions it is given: thousands of small nodes per run (381 of 952 for resnet18 at 64x64), which
ONNX Runtime executes one by one, at a few microseconds each, for every image again although the
positions of a run never change. `position_model` and `without_positions` cut the graph in two:
the position part (positions -> index values), run once per run and kept, and the rest, which reads
those values as inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


def position_nodes(graph: onnx.GraphProto, inputs: set[str]) -> tuple[list[int], list[str]]:
    """Indices of the nodes computed from `inputs` and constants alone, and the values of theirs that
    other nodes (or the graph's outputs) read. Constant-only nodes stay out: ORT folds them."""
    constant = {i.name for i in graph.initializer}
    derived = set(inputs)
    moved = []
    for k, node in enumerate(graph.node):  # exported graphs list nodes in topological order
        read = [i for i in node.input if i]
        if all(i in constant for i in read):
            constant.update(node.output)
        elif all(i in constant or i in derived for i in read):
            derived.update(node.output)
            moved.append(k)
    gone = set(moved)
    kept = [n for k, n in enumerate(graph.node) if k not in gone]
    read_elsewhere = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    values = sorted({o for k in moved for o in graph.node[k].output if o in read_elsewhere})
    return moved, values


def _needed(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], outputs: list[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes (in order) and the names (inputs, initializers, values) that `outputs` depend on."""
    wanted, chosen = set(outputs), set[int]()
    for node in reversed(nodes):
        if any(o in wanted for o in node.output):
            chosen.add(id(node))
            wanted.update(i for i in node.input if i)
    return [n for n in nodes if id(n) in chosen], wanted


def position_model(model: onnx.ModelProto, inputs: list[str]) -> tuple[onnx.ModelProto, list[str]] | None:
    """The model computing, from the position inputs alone, every value of theirs the rest reads,
    and those values' names; None when no node depends on the positions alone."""
    graph = model.graph
    moved, values = position_nodes(graph, set(inputs))
    if not values:
        return None
    nodes, needed = _needed(graph, list(graph.node), values)
    sub = helper.make_graph(
        nodes, "positions",
        [i for i in graph.input if i.name in needed],
        [onnx.ValueInfoProto(name=v) for v in values],  # types: ORT infers them
        [t for t in graph.initializer if t.name in needed],
    )
    return helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version), values


def without_positions(model: onnx.ModelProto, inputs: list[str], probe: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` reading the position part's values (`probe`: their values for some positions, which
    give their types and shapes) as inputs instead of computing them."""
    graph = model.graph
    moved, _ = position_nodes(graph, set(inputs))
    gone = set(moved)
    nodes, needed = _needed(graph, [n for k, n in enumerate(graph.node) if k not in gone], [o.name for o in graph.output])
    given = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape) for name, value in probe.items()]
    rest = helper.make_graph(
        nodes, graph.name,
        [i for i in graph.input if i.name in needed] + given,
        list(graph.output),
        [t for t in graph.initializer if t.name in needed],
    )
    return helper.make_model(rest, opset_imports=list(model.opset_import), ir_version=model.ir_version)
