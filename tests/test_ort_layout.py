"""Residual additions moved to channels last: the same values from fewer transposes, and graphs
outside the pattern left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hyinf.runtime.ort_layout import TO_NCHW, TO_NHWC, channels_last_additions


def residual_graph(*, conv_side: bool = True, closing: int = 1, extra_reader: bool = False) -> onnx.ModelProto:
    """rows (N, H, W, C) and a convolution of x (N, C, H, W) added, relu'd and turned back into rows
    (by `closing` transposes); `extra_reader` also outputs the relu's value in NCHW."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["rows"], ["r"], perm=TO_NCHW),
        helper.make_node("Add", ["c", "r"] if conv_side else ["x", "r"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    outputs = []
    for k in range(closing):
        nodes.append(helper.make_node("Transpose", ["y"], [f"t{k}"], perm=TO_NHWC))
        nodes.append(helper.make_node("Neg", [f"t{k}"], [f"out{k}"]))
        outputs.append(helper.make_tensor_value_info(f"out{k}", TensorProto.FLOAT, [2, 5, 6, 4]))
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 6]))
    graph = helper.make_graph(
        nodes, "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 6]), helper.make_tensor_value_info("rows", TensorProto.FLOAT, [2, 5, 6, 4])],
        outputs, [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 4, 5, 6)).astype(np.float32), "rows": rng.standard_normal((2, 5, 6, 4)).astype(np.float32)}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def transposes(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Transpose" for n in model.graph.node)


@pytest.mark.parametrize("closing", [1, 2])
def test_a_residual_addition_runs_channels_last_with_the_same_values(closing: int) -> None:
    model = residual_graph(closing=closing)
    expected = run(model)
    rewritten = channels_last_additions(residual_graph(closing=closing))
    onnx.checker.check_model(rewritten)
    assert transposes(rewritten) == 1  # one left, after the convolution, where ORT folds it
    assert [o.name for o in rewritten.graph.output] == [o.name for o in model.graph.output]
    for want, got in zip(expected, run(rewritten)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw", [{"conv_side": False}, {"extra_reader": True}], ids=["not a convolution", "read in NCHW too"])
def test_graphs_outside_the_pattern_are_left_alone(kw: dict) -> None:
    model = residual_graph(**kw)
    before = model.SerializeToString()
    assert channels_last_additions(model).SerializeToString() == before
