"""Residual additions of an exported chunk graph moved into the channels-last layout of its rows.

The runtime keeps windows as pixel-major rows (channels last) and hands them to convolutions as
NCHW, so an exported resnet block ends in `Add(Conv(...), Transpose(rows)) -> Relu -> Transpose`
back to rows. ONNX Runtime folds a transpose next to a convolution into the NCHWc reorder it does
anyway, but not these two, which run as separate kernels (resnet18: 111 per run of 9 blocks, 4% of
a run). `channels_last_additions` rewrites each such chain as `Add(Transpose(Conv(...)), rows) ->
Relu`: the one transpose left follows the convolution, where ORT folds it.
"""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import helper

TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]
# One-input operators that act on each element alone, so they commute with any transpose.
ELEMENTWISE = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Identity"})


def _perm(node: onnx.NodeProto) -> list[int] | None:
    if node.op_type != "Transpose":
        return None
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _is_2d_conv(node: onnx.NodeProto | None) -> bool:
    """A convolution of 2-D maps: its output has rank 4, as the addition's other input."""
    if node is None or node.op_type != "Conv":
        return False
    return any(a.name == "kernel_shape" and len(a.ints) == 2 for a in node.attribute)


def channels_last_additions(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every `Add(Conv(x), Transpose[to NCHW](r)) -> elementwise ops -> Transpose[to NHWC]`
    (each value read only by the next node of the chain, the last by transposes alone) computed
    channels last: `Add(Transpose[to NHWC](Conv(x)), r) -> elementwise ops`, read where the closing
    transposes were. Values are unchanged; the graph is modified in place and returned."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    kept = {o.name for o in graph.output}
    gone: set[int] = set()
    renamed: dict[str, str] = {}  # outputs of the dropped closing transposes -> the chain's end
    added: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []  # (new transpose, the addition it feeds)
    chain: set[str] = set()  # values that change layout: their recorded shapes no longer hold
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        opening = [k for k, name in enumerate(add.input) if name in producer and _perm(producer[name]) == TO_NCHW]
        if len(opening) != 1:
            continue
        side = opening[0]
        transpose, conv = producer[add.input[side]], producer.get(add.input[1 - side])
        if not _is_2d_conv(conv) or len(consumers[transpose.output[0]]) != 1:
            continue
        end = add.output[0]  # follow the chain of elementwise ops, each read by the next alone
        while len(consumers[end]) == 1 and consumers[end][0].op_type in ELEMENTWISE and end not in kept:
            end = consumers[end][0].output[0]
        closing = consumers[end]
        if end in kept or not closing or any(_perm(c) != TO_NHWC or c.output[0] in kept for c in closing):
            continue
        chain.update(_between(add.output[0], end, consumers))
        moved = f"{add.input[1 - side]}_nhwc_{len(added)}"
        added.append((helper.make_node("Transpose", [add.input[1 - side]], [moved], perm=TO_NHWC), add))
        add.input[side], add.input[1 - side] = transpose.input[0], moved
        gone.update({id(transpose), *map(id, closing)})
        renamed.update({c.output[0]: end for c in closing})
    if not added:
        return model
    nodes = []
    before = {id(add): node for node, add in added}
    for node in graph.node:
        if id(node) in gone:
            continue
        if id(node) in before:
            nodes.append(before[id(node)])
        for k, name in enumerate(node.input):
            node.input[k] = renamed.get(name, name)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    shapes = [v for v in graph.value_info if v.name not in chain]
    del graph.value_info[:]
    graph.value_info.extend(shapes)
    return model


def _between(start: str, end: str, consumers: dict[str, list[onnx.NodeProto]]) -> list[str]:
    """The values of a chain of single-consumer nodes from `start` to `end`."""
    values = [start]
    while values[-1] != end:
        values.append(consumers[values[-1]][0].output[0])
    return values
