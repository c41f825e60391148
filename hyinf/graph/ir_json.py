"""The IR as JSON: how a model's structure (never its weights) travels to the plans service.

Reading is strict: every field is checked for its type and range before a `Graph` is built, so a
crafted document gets one clear error, never a half-built graph.
"""

from __future__ import annotations

from typing import Any

from hyinf.errors import PlanError
from hyinf.graph.ir import Graph, Node, Op, Window

MAX_NODES = 20_000  # the largest CNNs have a few thousand nodes
MAX_DIM = 1 << 24


def graph_to_json(graph: Graph) -> dict[str, Any]:
    """The graph as plain JSON values."""
    def node(n: Node) -> dict[str, Any]:
        out: dict[str, Any] = {"name": n.name, "op": n.op.value, "inputs": list(n.inputs), "shape": list(n.shape),
                               "macs": n.macs, "label": n.label, "fn": n.fn}
        if n.spatial is not None:
            out["spatial"] = list(n.spatial)
        if n.window is not None:
            w = n.window
            out["window"] = {"kernel": list(w.kernel), "stride": list(w.stride), "dilation": list(w.dilation),
                             "pad_before": list(w.pad_before), "pad_after": list(w.pad_after)}
        return out

    return {"nodes": [node(n) for n in graph.nodes], "input": graph.input, "output": graph.output}


def _int(value: Any, where: str, low: int = 0, high: int = MAX_DIM) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PlanError(f"{where} must be an integer in [{low}, {high}], got {str(value)[:40]!r}")
    return value


def _ints(value: Any, where: str, length: int | None = None, low: int = 0) -> tuple[int, ...]:
    if not isinstance(value, list) or (length is not None and len(value) != length) or len(value) > 8:
        raise PlanError(f"{where} must be a list of {length or 'at most 8'} integers")
    return tuple(_int(v, f"{where}[{i}]", low) for i, v in enumerate(value))


def _str(value: Any, where: str, limit: int = 500) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise PlanError(f"{where} must be a string of at most {limit} characters")
    return value


def _node(data: Any, k: int) -> Node:
    where = f"structure node {k}"
    if not isinstance(data, dict):
        raise PlanError(f"{where} must be an object")
    unknown = set(data) - {"name", "op", "inputs", "shape", "macs", "label", "fn", "spatial", "window"}
    if unknown:
        raise PlanError(f"{where} has unknown fields: {', '.join(sorted(unknown)[:5])}")
    try:
        op = Op(data.get("op"))
    except ValueError:
        raise PlanError(f"{where}: op must be one of {', '.join(o.value for o in Op)}") from None
    inputs = data.get("inputs", [])
    if not isinstance(inputs, list) or len(inputs) > 64:
        raise PlanError(f"{where}: inputs must be a list of at most 64 node names")
    shape = _ints(data.get("shape"), f"{where}.shape", low=1)
    spatial = _ints(data["spatial"], f"{where}.spatial", 2) if data.get("spatial") is not None else None
    if spatial is not None and any(a >= len(shape) for a in spatial):
        raise PlanError(f"{where}.spatial names axes the shape does not have")
    window = None
    if data.get("window") is not None:
        w = data["window"]
        if not isinstance(w, dict) or set(w) != {"kernel", "stride", "dilation", "pad_before", "pad_after"}:
            raise PlanError(f"{where}.window must hold kernel, stride, dilation, pad_before and pad_after")
        window = Window(_ints(w["kernel"], f"{where}.window.kernel", 2, 1), _ints(w["stride"], f"{where}.window.stride", 2, 1),
                        _ints(w["dilation"], f"{where}.window.dilation", 2, 1), _ints(w["pad_before"], f"{where}.window.pad_before", 2),
                        _ints(w["pad_after"], f"{where}.window.pad_after", 2))
    return Node(_str(data.get("name"), f"{where}.name", 200), op, tuple(_str(i, f"{where}.inputs", 200) for i in inputs), shape,
                spatial, window, _int(data.get("macs", 1), f"{where}.macs", 0, 1 << 40), _str(data.get("label", ""), f"{where}.label"),
                _str(data.get("fn", ""), f"{where}.fn", 64))


def graph_from_json(data: Any) -> Graph:
    """The graph a JSON structure describes; PlanError naming the first thing wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise PlanError("the structure must be an object with a list of nodes")
    if not 1 <= len(data["nodes"]) <= MAX_NODES:
        raise PlanError(f"the structure must have 1 to {MAX_NODES} nodes, got {len(data['nodes'])}")
    nodes = tuple(_node(n, k) for k, n in enumerate(data["nodes"]))
    if len({n.name for n in nodes}) != len(nodes):
        raise PlanError("the structure names two nodes alike")
    try:
        graph = Graph(nodes, _str(data.get("input"), "structure input", 200), _str(data.get("output"), "structure output", 200))
    except ValueError as e:
        raise PlanError(f"the structure is not a valid graph: {e}") from None
    if graph.input_node.op is not Op.INPUT or graph.input_node.spatial is None or len(graph.input_node.shape) != 4:
        raise PlanError("the structure's input must be an input node of shape (1, C, H, W) with spatial axes")
    return graph
