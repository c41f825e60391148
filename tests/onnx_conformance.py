"""ONNX's own node test cases run through hyinf's operator layer (`hyinf.graph.onnx_ops`).

Every case of `onnx.backend.test.case.node.collect_testcases()` whose single node is an operator hyinf
has a torch form for is given to that form, with the case's opset. The form either computes the case
(then it must equal the expected outputs) or declines its settings with NotImplementedError (then
hyinf runs that node on ONNX's reference implementation, so it is correct by construction).
`python tests/onnx_conformance.py` prints the counts recorded in docs/onnx.md.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx.backend.test.case.node import collect_testcases

from hyinf.graph.onnx_ops import OPS, lookup


@dataclass(frozen=True)
class Outcome:
    case: str
    op: str
    result: str  # "passed", "failed", "declined", or "out of scope" (inputs torch tensors cannot hold)
    detail: str = ""


def _opset(model: onnx.ModelProto) -> int:
    return next(
        (i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), onnx.defs.onnx_opset_version()
    )


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _array(value) -> np.ndarray:
    return np.array(
        onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value, copy=True
    )


def run_case(case) -> list[Outcome]:
    node = case.model.graph.node[0]
    fn = lookup(node.op_type, _opset(case.model))
    outcomes = []
    for inputs, expected in case.data_sets:
        given = iter(inputs)
        try:
            values = [None if not name else torch.from_numpy(_array(next(given))) for name in node.input]
        except TypeError as e:  # strings, 4-bit and 8-bit floats: never an image-dependent value in hyinf
            outcomes.append(Outcome(case.name, node.op_type, "out of scope", f"input type: {e}"[:120]))
            continue
        shapes = [tuple(v.shape) if isinstance(v, torch.Tensor) else () for v in values]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outs = fn(values, _attrs(node), shapes)
        except NotImplementedError as e:
            outcomes.append(Outcome(case.name, node.op_type, "declined", str(e)))
            continue
        except Exception as e:  # a form that neither computes nor declines a case is a defect
            outcomes.append(Outcome(case.name, node.op_type, "failed", f"{type(e).__name__}: {e}"[:200]))
            continue
        wanted = [o for o in node.output if o]
        if len(outs) < len(wanted):  # as on import: the node then runs on the reference implementation
            outcomes.append(
                Outcome(case.name, node.op_type, "declined", f"gives {len(outs)} of {len(wanted)} outputs")
            )
            continue
        problems = []
        for i, want in enumerate(expected[: len(wanted)]):
            if i >= len(outs):
                problems.append(f"output {i} missing")
                continue
            got = outs[i].detach().numpy() if isinstance(outs[i], torch.Tensor) else np.asarray(outs[i])
            want = _array(want)
            if got.shape != want.shape:
                problems.append(f"output {i} shape {got.shape} != {want.shape}")
            elif not np.allclose(
                got.astype(np.float64),
                want.astype(np.float64),
                rtol=max(case.rtol, 1e-5),
                atol=max(case.atol, 1e-6),
                equal_nan=True,
            ):
                problems.append(f"output {i} off by {np.nanmax(np.abs(got.astype(np.float64) - want)):.3g}")
        outcomes.append(
            Outcome(case.name, node.op_type, "failed" if problems else "passed", "; ".join(problems))
        )
    return outcomes


def cases() -> list:
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # the generators' own overflow warnings
        warnings.simplefilter("ignore")
        every = collect_testcases()
    return [
        c
        for c in every
        if c.kind == "node"
        and len(c.model.graph.node) == 1
        and c.model.graph.node[0].op_type in OPS
        and c.model.graph.node[0].domain in ("", "ai.onnx")
    ]


def run_all() -> list[Outcome]:
    return [o for c in cases() for o in run_case(c)]


if __name__ == "__main__":
    outcomes = run_all()
    print(
        f"{len({o.case for o in outcomes})} cases of {len({o.op for o in outcomes})} operators, {len(outcomes)} data sets:",
        dict(Counter(o.result for o in outcomes)),
    )
    print("| operator | passed | declined (run on the reference) | out of scope | failed |")
    print("|---|---|---|---|---|")
    for op in sorted({o.op for o in outcomes}):
        mine = Counter(o.result for o in outcomes if o.op == op)
        print(f"| {op} | {mine['passed']} | {mine['declined']} | {mine['out of scope']} | {mine['failed']} |")
    for o in outcomes:
        if o.result != "passed":
            print(o.result, o.case, o.detail[:150])
