"""A structural fingerprint of a graph: architecture and shapes, not weights, so one plan serves every
fine-tuned copy of an architecture and no other."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from hyinf.graph.ir import Graph


def graph_fingerprint(graph: Graph) -> str:
    nodes = [
        {k: v for k, v in asdict(n).items() if k != "label"}  # labels are names for people, not structure
        for n in graph.nodes
    ]
    text = json.dumps({"nodes": nodes, "input": graph.input, "output": graph.output}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
