"""Property-based fuzzing of what hyinf reads from outside: plan JSON and ONNX protobufs. Whatever the
input, only hyinf's own errors come out, and each case finishes in bounded time."""

from __future__ import annotations

import copy
import json
import os
import warnings
from datetime import timedelta

import numpy as np
import pytest
import onnx
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hyinf.cli.plan import plan_line
from hyinf.errors import HyinfError, PlanError, PlanWarning
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.onnx_frontend import load_onnx
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.document import PlanDocument
from hyinf.planner.select import make_plan
from hyinf.profiler.machine import fingerprint

# HYINF_FUZZ_EXAMPLES=2000 hunts longer (1,500 per property found nothing more).
BOUNDED = settings(
    max_examples=int(os.environ.get("HYINF_FUZZ_EXAMPLES", 80)),
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow],
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


PROGRAM = trace_torch(_model(), (1, 3, 16, 16))
GRID = OcclusionGrid.make((16, 16), 4, 4)
PLAN = json.loads(
    make_plan(PROGRAM.graph, GRID, fingerprint(torch.device("cpu")), model_name="fuzz", db=None).to_json()
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


ALL_PATHS = [p for p in _paths(PLAN) if p]


@st.composite
def mutated_plans(draw):
    body = copy.deepcopy(PLAN)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = body
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()):
                if isinstance(parent, dict):
                    parent.pop(path[-1], None)
                elif isinstance(parent, list) and path[-1] < len(parent):
                    parent.pop(path[-1])
            else:
                parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    return body


@BOUNDED
@given(mutated_plans())
def test_mutated_plan_documents_give_plan_errors_only(body) -> None:
    try:
        text = json.dumps(body)
    except ValueError:
        return
    try:
        document = PlanDocument.parse(text, "fuzzed plan")
        plan_line(dict(document.body))  # what `hyinf plans list` and `plans import` print of it
        assert document.device.description
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", PlanWarning
            )  # a mutated device or backend: warned of, not an error
            document.bind(PROGRAM.graph, GRID, fingerprint(torch.device("cpu")))
    except PlanError:
        pass


@BOUNDED
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_a_plan(data) -> None:
    try:
        PlanDocument.parse(data, "fuzzed bytes")
    except PlanError:
        pass


def _onnx_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    init = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "F"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "F"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fuzz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


ONNX = _onnx_model()
ONNX_BYTES = ONNX.SerializeToString()
OP_TYPES = [
    "Conv",
    "Relu",
    "MaxPool",
    "AveragePool",
    "Softmax",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Pad",
    "Clip",
    "Concat",
    "Split",
    "Slice",
    "Gemm",
    "MatMul",
    "Add",
    "Identity",
    "Wobble",
    "Resize",
    "BatchNormalization",
    "Transpose",
]


@BOUNDED
@given(
    st.lists(st.tuples(st.integers(0, len(ONNX_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(1, len(ONNX_BYTES)),
)
def test_byte_mutated_onnx_gives_model_errors_only(flips, keep) -> None:
    data = bytearray(ONNX_BYTES[:keep])
    for at, value in flips:
        if at < len(data):
            data[at] = value
    try:
        load_onnx(bytes(data))
    except HyinfError:
        pass


@st.composite
def mutated_graphs(draw):
    proto = onnx.ModelProto()
    proto.CopyFrom(ONNX)
    for _ in range(draw(st.integers(1, 3))):
        node = proto.graph.node[draw(st.integers(0, len(proto.graph.node) - 1))]
        change = draw(st.sampled_from(["op", "attr", "input", "dim", "opset", "domain"]))
        if change == "op":
            node.op_type = draw(st.sampled_from(OP_TYPES))
        elif change == "attr" and node.attribute:
            attr = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
            if attr.type == onnx.AttributeProto.INTS:
                attr.ints[:] = draw(st.lists(st.integers(-3, 6), max_size=5))
            elif attr.type == onnx.AttributeProto.INT:
                attr.i = draw(st.integers(-3, 6))
        elif change == "input" and node.input:
            node.input[draw(st.integers(0, len(node.input) - 1))] = draw(
                st.sampled_from(["x", "c", "r", "W", "", "nowhere"])
            )
        elif change == "dim":
            dims = proto.graph.input[0].type.tensor_type.shape.dim
            dims[draw(st.integers(0, 3))].dim_value = draw(st.integers(0, 40))
        elif change == "opset":
            proto.opset_import[0].version = draw(st.integers(1, 30))
        else:
            node.domain = draw(st.sampled_from(["", "ai.onnx", "org.example", "com.microsoft"]))
    return proto


@BOUNDED
@given(mutated_graphs())
def test_structurally_mutated_onnx_gives_model_errors_only(proto) -> None:
    try:
        imported = load_onnx(proto)
    except HyinfError:
        return
    with torch.no_grad():
        imported.module(torch.rand(imported.input_shape))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_a_targets_csv_is_read_or_refused_in_one_line(tmp_path_factory, data: bytes) -> None:
    """Any bytes as a --targets file: targets for named images, or an InputError; never another exception."""
    from hyinf.errors import InputError
    from hyinf.imageset.inputs import Item, read_targets

    path = tmp_path_factory.mktemp("targets") / "t.csv"
    path.write_bytes(b"image,target\n" + data if data[:1] == b"a" else data)
    items = [Item(path, "a.png"), Item(path, "b/c.png")]
    try:
        targets, notes = read_targets(path, items)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert set(targets) <= {"a.png", "b/c.png"} and all(isinstance(t, int) and t >= 0 for t in targets.values())


calibration_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.floats(allow_nan=True), st.text(max_size=5),
                               st.lists(st.integers(-2, 70000), max_size=3))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["target_ssim", "top_agreement", "approx_threshold", "drill_down", "coarse_stride", "ssim_min",
                                        "ssim_mean", "top_min", "top_mean", "speedup", "candidates", "images", "fingerprints", "extra"]),
                       calibration_values, max_size=14))
def test_a_crafted_calibration_is_refused_as_a_malformed_plan(demo_plan_body, fields: dict) -> None:
    body = {**demo_plan_body, "calibration": fields, "settings": {**demo_plan_body["settings"], "target_ssim": fields.get("target_ssim")}}
    try:
        PlanDocument.parse(json.dumps(body))
    except PlanError as e:
        assert "\n" not in str(e)


@pytest.fixture(scope="module")
def demo_plan_body() -> dict:
    from hyinf.demo import load_demo
    from hyinf.profiler.machine import fingerprint

    graph = trace_torch(load_demo(), (1, 3, 64, 64)).graph
    return dict(make_plan(graph, OcclusionGrid.make((64, 64), 8, 4), fingerprint(torch.device("cpu")), model_name="demo", db=None).body)
