"""ONNX models: imported into the same IR, every mode equal to ONNX Runtime re-running each occluded image."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import hyinf
from conftest import assert_close_to
from hyinf.cli import main
from hyinf.errors import ModelError
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.ir import Op
from hyinf.graph.onnx_frontend import load_onnx
from hyinf.graph.torch_frontend import trace_torch

PATCH, STRIDE = 4, 4


def ort_scores(proto: onnx.ModelProto, image: torch.Tensor, target: int) -> torch.Tensor:
    """The reference: ONNX Runtime on every occluded image, one at a time (works for fixed batch 1)."""
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    grid = OcclusionGrid.make(tuple(image.shape[-2:]), PATCH, STRIDE)
    scores = []
    for top in grid.all_starts(0):
        for left in grid.all_starts(1):
            occluded = image.clone()
            occluded[..., top:top + PATCH, left:left + PATCH] = 0.0
            out = session.run(None, {name: occluded[None].numpy()})[0]
            scores.append(float(out.reshape(-1)[target]))
    return torch.tensor(scores).reshape(grid.shape)


def assert_all_modes_match_ort(proto: onnx.ModelProto, image: torch.Tensor) -> None:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    target = int(np.argmax(session.run(None, {session.get_inputs()[0].name: image[None].numpy()})[0]))
    reference = ort_scores(proto, image, target)
    assert float((reference - reference.mean()).abs().max()) > 0, "the patch never changes the output"
    for mode in ("naive", "full", "incremental", "hybrid"):
        result = hyinf.explain(proto, image, patch=PATCH, stride=STRIDE, target=target, mode=mode)
        assert_close_to(reference, result.scores.to(reference.dtype), f"{proto.graph.name} {mode}")


def _export(model: torch.nn.Module, size: int, dynamo: bool, dynamic_batch: bool) -> onnx.ModelProto:
    example = torch.randn(1, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic_batch else None)
            return program.model_proto
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=13, input_names=["image"],
                          dynamic_axes={"image": {0: "N"}} if dynamic_batch else None)
    return onnx.load_model_from_string(buffer.getvalue())


@pytest.mark.parametrize(
    ("name", "dynamo", "dynamic_batch"),
    [("resnet18", False, True), ("squeezenet1_1", False, False), ("mobilenet_v3_small", True, False),
     pytest.param("densenet121", True, True, marks=pytest.mark.slow),  # 20 s; torch.export with a dynamic batch: mobilenet below
     ("mobilenet_v3_small", True, True), ("shufflenet_v2_x0_5", False, True), ("efficientnet_b0", False, False)],
)
def test_exported_torchvision_models(name: str, dynamo: bool, dynamic_batch: bool) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    proto = _export(model, 32, dynamo, dynamic_batch)
    imported = load_onnx(proto)
    image = torch.randn(3, 32, 32)
    with torch.no_grad():
        assert_close_to(model(image[None]), imported.module(image[None]), f"{name} import")
    graph = trace_torch(imported.module, imported.input_shape).graph
    assert sum(n.op is Op.CONV for n in graph.nodes) > 5  # convolutions stay convolutions, not opaque blobs
    assert_all_modes_match_ort(proto, image)


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array.astype(np.float32), name))


def opset9_graph() -> onnx.ModelProto:
    """The old style: weights as Constant nodes, BatchNormalization with separate inputs, LRN, Sum,
    asymmetric and SAME padding, pooling that counts padding, an operator hyinf has no torch form for."""
    rng = np.random.default_rng(0)
    nodes = [
        _const("w1", rng.normal(size=(6, 3, 3, 3))), _const("b1", rng.normal(size=6)),
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[0, 1, 1, 0]),
        _const("scale", rng.uniform(0.5, 1.5, size=6)), _const("shift", rng.normal(size=6)),
        _const("mean", rng.normal(size=6)), _const("var", rng.uniform(0.5, 1.5, size=6)),
        helper.make_node("BatchNormalization", ["c1", "scale", "shift", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("LRN", ["r1"], ["lrn"], size=3, alpha=1e-2, beta=0.75, bias=1.0),
        helper.make_node("LeakyRelu", ["lrn"], ["a"], alpha=0.1),
        helper.make_node("Sigmoid", ["lrn"], ["b"]),
        helper.make_node("Clip", ["lrn"], ["c"], min=-0.5, max=0.5),
        helper.make_node("Sum", ["a", "b", "c"], ["s"]),
        helper.make_node("MaxPool", ["s"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        _const("w2", rng.normal(size=(8, 6, 3, 3))),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Softsign", ["c2"], ["soft"]),  # no torch form: evaluated by the reference, fully
        helper.make_node("AveragePool", ["soft"], ["p2"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1], count_include_pad=1),
        helper.make_node("GlobalAveragePool", ["p2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        _const("wf", rng.normal(size=(5, 8))), _const("bf", rng.normal(size=5)),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
        helper.make_node("Dropout", ["logits"], ["d"]),
        helper.make_node("Softmax", ["d"], ["out"], axis=1),
    ]
    graph = helper.make_graph(nodes, "opset9", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])


def shuffle_graph() -> onnx.ModelProto:
    """Opset 14: initializers, Shape-derived Reshape, a channel shuffle, Pad, Clip with inputs,
    HardSigmoid, HardSwish, Split, Concat, ReduceMean, MatMul."""
    rng = np.random.default_rng(1)
    init = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "pads"),
            numpy_helper.from_array(np.array([1, 2, 4, 16, 16], dtype=np.int64), "split_shape"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "lo"), numpy_helper.from_array(np.array(2.0, dtype=np.float32), "hi"),
            numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "m"),
            numpy_helper.from_array(np.array([4, 4], dtype=np.int64), "halves")]
    nodes = [
        helper.make_node("Pad", ["image", "pads"], ["padded"], mode="constant"),
        helper.make_node("Conv", ["padded", "w"], ["c"]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["clipped"]),
        helper.make_node("Shape", ["clipped"], ["shape"]),
        helper.make_node("Reshape", ["clipped", "split_shape"], ["grouped"]),
        helper.make_node("Transpose", ["grouped"], ["swapped"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["swapped", "shape"], ["shuffled"]),
        helper.make_node("HardSigmoid", ["shuffled"], ["hs"], alpha=0.3, beta=0.4),
        helper.make_node("HardSwish", ["hs"], ["hw"]),
        helper.make_node("Split", ["hw", "halves"], ["first", "second"], axis=1),
        helper.make_node("Concat", ["second", "first"], ["swapped_halves"], axis=1),
        helper.make_node("ReduceMean", ["swapped_halves"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "m"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "shuffle", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], initializer=init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("make", [opset9_graph, shuffle_graph], ids=["opset9", "shuffle"])
def test_hand_built_graphs(make) -> None:
    proto = make()
    onnx.checker.check_model(proto)
    if make is shuffle_graph:  # every operator in it has a torch form: nothing falls back to full evaluation
        imported = load_onnx(proto)
        assert not any(n.op is Op.OPAQUE for n in trace_torch(imported.module, imported.input_shape).graph.nodes)
    torch.manual_seed(0)
    assert_all_modes_match_ort(proto, torch.rand(3, 16, 16))


def test_unknown_operator_is_opaque_not_an_error() -> None:
    imported = load_onnx(opset9_graph())
    graph = trace_torch(imported.module, imported.input_shape).graph
    assert any(n.op is Op.OPAQUE and "onnx_reference" in n.label for n in graph.nodes)


def _write(tmp_path: Path, proto: onnx.ModelProto, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(proto.SerializeToString())
    return path


def test_an_onnx_file_explained_again_is_imported_once_until_it_changes(tmp_path: Path) -> None:
    proto = opset9_graph()
    path = _write(tmp_path, proto)
    image = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    first = hyinf.explain(str(path), image, patch=4, stride=4, mode="incremental", target=1)
    again = hyinf.explain(path, image, patch=4, stride=4, mode="incremental", target=1)
    assert torch.equal(first.scores, again.scores)
    bias = next(n for n in proto.graph.node if n.output[0] == "bf")  # the classifier's bias: every score moves
    bias.attribute[0].t.CopyFrom(numpy_helper.from_array(np.arange(5, dtype=np.float32), "bf"))
    path.write_bytes(proto.SerializeToString())
    changed = hyinf.explain(str(path), image, patch=4, stride=4, mode="incremental", target=1)
    assert_close_to(ort_scores(proto, image, 1), changed.scores, "the rewritten file")
    assert not torch.allclose(first.scores, changed.scores)


def test_bad_onnx_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("not a model at all")
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_onnx(text)
    whole = opset9_graph().SerializeToString()
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelError):
        load_onnx(truncated)
    broken = opset9_graph()
    broken.graph.node[2].input[1] = "missing_weights"
    with pytest.raises(ModelError, match="checker"):
        load_onnx(broken)
    two = opset9_graph()
    two.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 16, 16]))
    with pytest.raises(ModelError, match="one image input"):
        load_onnx(two)
    flat = opset9_graph()
    flat.graph.input[0].CopyFrom(helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 768]))
    with pytest.raises(ModelError, match="NCHW"):
        load_onnx(flat)
    open_size = opset9_graph()
    open_size.graph.input[0].CopyFrom(helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"]))
    with pytest.raises(ModelError, match="--image-size"):
        load_onnx(open_size)
    assert load_onnx(open_size, (16, 16)).input_shape == (1, 3, 16, 16)
    future = opset9_graph()
    future.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    with pytest.raises(ModelError, match="newer than the installed onnx"):
        load_onnx(future)


def test_cli_explains_and_plans_onnx_files(tmp_path: Path) -> None:
    path = _write(tmp_path, opset9_graph())
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).uniform(size=(16, 16, 3)) * 255).astype(np.uint8)).save(image)
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(main, ["explain", str(path), str(image), "--image-size", "16", "16", "--patch", "4", "--stride", "4", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert np.load(out / "heatmap.npy").shape == (4, 4)
    planned = runner.invoke(main, ["plan", str(path), "--image-size", "16", "16", "--patch", "4", "--stride", "4", "--db", str(tmp_path / "p.db")])
    assert planned.exit_code == 0, planned.output
    bad = tmp_path / "bad.onnx"
    bad.write_text("nope")
    failed = runner.invoke(main, ["explain", str(bad), str(image)])
    assert failed.exit_code != 0 and "not an ONNX model" in failed.output and len(failed.output.strip().splitlines()) == 1


def test_onnx_node_conformance_cases_pass_through_hyinfs_operators() -> None:
    """ONNX's own node cases for every operator with a torch form: each is computed right or declined
    (declined nodes run on ONNX's reference implementation); none is computed wrong or crashes."""
    from onnx_conformance import run_all

    outcomes = run_all()
    failed = [f"{o.case}: {o.detail}" for o in outcomes if o.result == "failed"]
    assert not failed, failed[:10]
    assert sum(o.result == "passed" for o in outcomes) >= 190  # 193 of 357 data sets with onnx 1.23 (docs/trust.md)
