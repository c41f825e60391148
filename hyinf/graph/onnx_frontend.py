"""ONNX models into hyinf: checked at the boundary, then turned into a torch.fx graph of the torch
calls the torch frontend already understands, so they land in the same IR.

Values that do not depend on the image (initializers, Constant and ConstantOfShape nodes, anything
computed from shapes) are folded while importing: shapes are static per image size, so Shape nodes
become constants. Operators without a torch form run through ONNX's reference implementation as one
opaque node (always evaluated fully): an unknown operator never stops a model from running.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import fx, nn

from hyinf.errors import ModelError
from hyinf.graph.onnx_ops import OPS

FIX = "export it again (torch.onnx.export) or check that the file is complete"


def _reference_run(node: str, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    proto = onnx.NodeProto.FromString(bytes.fromhex(node))
    names = [n for n in proto.input if n]
    arrays = {name: value.detach().cpu().numpy() for name, value in zip(names, inputs)}
    out = ReferenceEvaluator(proto).run(None, arrays)[0]
    device = inputs[0].device if inputs else torch.device("cpu")
    return torch.from_numpy(np.ascontiguousarray(out)).to(device)


_ATTRIBUTE_SUFFIX = {"FLOAT": "f", "INT": "i", "STRING": "s", "TENSOR": "t", "FLOATS": "f", "INTS": "i", "STRINGS": "s"}


class _ReferenceNode(torch.autograd.Function):
    """An ONNX node kept as it is when hyinf's programs are exported back to ONNX (the ONNX Runtime
    backend): tracing the reference implementation would record its result as a constant."""

    @staticmethod
    def forward(ctx: Any, node: str, *inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _reference_run(node, inputs)

    @staticmethod
    def symbolic(g: Any, node: str, *inputs: Any) -> Any:
        proto = onnx.NodeProto.FromString(bytes.fromhex(node))
        if proto.domain not in ("", "ai.onnx"):
            raise ModelError(f"operator {proto.domain}.{proto.op_type} cannot run on the ONNX Runtime backend; use backend='torch'")
        attrs: dict[str, Any] = {}
        for a in proto.attribute:
            kind = onnx.AttributeProto.AttributeType.Name(a.type)
            if kind not in _ATTRIBUTE_SUFFIX:
                raise ModelError(f"{proto.op_type}'s attribute {a.name} ({kind}) cannot be exported; use backend='torch'")
            value = onnx.helper.get_attribute_value(a)
            attrs[f"{a.name}_{_ATTRIBUTE_SUFFIX[kind]}"] = torch.from_numpy(numpy_helper.to_array(value).copy()) if kind == "TENSOR" else value
        return g.op(proto.op_type, *inputs, **attrs)


@fx.wrap
def onnx_reference(node: str, *inputs: torch.Tensor) -> torch.Tensor:
    """Evaluate one ONNX node (serialised, hex) with ONNX's reference implementation: operators hyinf has
    no torch form for."""
    if torch.jit.is_tracing():
        return _ReferenceNode.apply(node, *inputs)
    return _reference_run(node, inputs)


@dataclass(frozen=True)
class OnnxModel:
    """An imported ONNX model: a torch module computing it, and the image shape it takes."""

    module: fx.GraphModule
    input_shape: tuple[int, int, int, int]  # (1, C, H, W)
    opset: int
    digest: str  # SHA-256 of the model as loaded: the same file gives the same digest


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _load(source: str | Path | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        return source, "the ONNX model"
    name = "the ONNX data" if isinstance(source, bytes) else str(source)
    try:  # a file's external weights (model.onnx.data) load from beside it
        proto = onnx.load_model_from_string(source) if isinstance(source, bytes) else onnx.load(str(source))
    except OSError as e:
        raise ModelError(f"cannot read {name} or its external weights: {e.strerror or e}") from None
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelError(f"{name} is not an ONNX model ({type(e).__name__}); {FIX}") from None
    if not proto.graph.node:
        raise ModelError(f"{name} is not an ONNX model (no graph); {FIX}")
    return proto, name


def _opset(proto: onnx.ModelProto, name: str) -> int:
    versions = [imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")]
    newest = onnx.defs.onnx_opset_version()
    opset = versions[0] if versions else 1
    if opset > newest:
        raise ModelError(f"{name} uses ONNX opset {opset}, newer than the installed onnx {onnx.__version__} knows (up to {newest}); "
                         f"export with opset_version={newest} or lower, or upgrade onnx")
    if opset < 9:
        raise ModelError(f"{name} uses ONNX opset {opset}; hyinf reads opsets 9 to {newest}: convert it with onnx.version_converter")
    return opset


def _image_input(proto: onnx.ModelProto, name: str, image_size: tuple[int, int] | None) -> tuple[str, tuple[int, int, int, int]]:
    """The one graph input that is not a weight, and its (1, C, H, W) shape."""
    weights = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1:
        found = ", ".join(i.name for i in inputs) or "none"
        raise ModelError(f"{name} must take one image input, it takes {len(inputs)} ({found}); export the model with the image as its only input")
    value = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] is None:
        shown = "x".join("?" if d is None else str(d) for d in dims) or "unknown"
        raise ModelError(f"{name}'s input {value.name!r} has shape {shown}; hyinf needs an NCHW image input with a known channel count")
    height, width = dims[2], dims[3]
    if image_size is not None:
        if (height, width) != (None, None) and (height, width) != tuple(image_size):
            raise ModelError(f"{name} takes {height}x{width} images, not {image_size[0]}x{image_size[1]}; leave out --image-size or give {height} {width}")
        height, width = image_size
    if height is None or width is None:
        raise ModelError(f"{name}'s input {value.name!r} has no fixed height and width; give the image size (--image-size H W, or image_size=)")
    return value.name, (1, dims[1], height, width)


def _checked(proto: onnx.ModelProto, name: str, input_name: str, shape: tuple[int, int, int, int]) -> onnx.ModelProto:
    """onnx.checker, then strict shape inference with the image input fixed to `shape`."""
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{name} fails the ONNX checker: {str(e).strip().splitlines()[0]}") from None
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for value in fixed.graph.input:
        if value.name == input_name:
            for dim, size in zip(value.type.tensor_type.shape.dim, shape):
                dim.Clear()
                dim.dim_value = size
    try:
        return onnx.shape_inference.infer_shapes(fixed, strict_mode=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as e:
        raise ModelError(f"{name} fails ONNX shape inference: {str(e).strip().splitlines()[0]}") from None


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


class _OnnxGraph(nn.Module):
    """Runs an ONNX graph with torch. Built once eagerly on an example image (folding constants and
    shapes), then traced by torch.fx into plain calls."""

    def __init__(self, proto: onnx.ModelProto, input_name: str, shape: tuple[int, int, int, int], name: str) -> None:
        super().__init__()
        self.input_name = input_name
        graph = proto.graph
        if len(graph.output) != 1:
            raise ModelError(f"{name} has {len(graph.output)} outputs; hyinf explains a model with one output of scores")
        self.output = graph.output[0].name
        self.consts: dict[str, torch.Tensor] = {t.name: _tensor(numpy_helper.to_array(t)) for t in graph.initializer}
        self.steps: list[tuple[onnx.NodeProto, dict[str, Any], list[tuple[int, ...]], bool]] = []
        example = {input_name: torch.rand(shape, generator=torch.Generator().manual_seed(0))}
        for node in graph.node:
            attrs = _attrs(node)
            if node.op_type == "Constant":
                self.consts[node.output[0]] = _constant(attrs)
                continue
            dynamic = [i for i in node.input if i in example]
            if node.op_type == "Shape" and dynamic:  # static per image size: a constant
                dims = list(example[node.input[0]].shape)[attrs.get("start", 0): attrs.get("end", None)]
                self.consts[node.output[0]] = torch.tensor(dims, dtype=torch.int64)
                continue
            values = [self._value(i, example) for i in node.input]
            if not dynamic:
                for out, value in zip(node.output, _reference(node, values)):
                    self.consts[out] = value
                continue
            shapes = [tuple(v.shape) if isinstance(v, torch.Tensor) else () for v in values]
            native = node.op_type in OPS
            try:
                outs = OPS[node.op_type](values, attrs, shapes) if native else None
            except (NotImplementedError, KeyError, TypeError, ValueError):
                native = False
            if not native:
                outs = [onnx_reference(node.SerializeToString().hex(), *[v for v in values if v is not None])]
            for out, value in zip(node.output, outs):  # type: ignore[arg-type]
                example[out] = value
            self.steps.append((node, attrs, shapes, native))
        if self.output not in example:
            raise ModelError(f"{name}'s output does not depend on its image input")

    def _value(self, name: str, env: dict[str, Any]) -> Any:
        if not name:
            return None  # an omitted optional input
        return env[name] if name in env else self.consts[name]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {self.input_name: image}
        for node, attrs, shapes, native in self.steps:
            values = [self._value(i, env) for i in node.input]
            if native:
                outs = OPS[node.op_type](values, attrs, shapes)
            else:
                outs = [onnx_reference(node.SerializeToString().hex(), *[v for v in values if v is not None])]
            for out, value in zip(node.output, outs):
                env[out] = value
        return env[self.output]


def _constant(attrs: dict[str, Any]) -> torch.Tensor:
    if "value" in attrs:
        return _tensor(numpy_helper.to_array(attrs["value"]))
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    raise ModelError(f"a Constant node holds {', '.join(attrs)}, which hyinf does not read; export it again")


def _reference(node: onnx.NodeProto, values: list[Any]) -> list[torch.Tensor]:
    """A node all of whose inputs are constants, evaluated once while importing."""
    names = [n for n in node.input if n]
    arrays = {n: v.numpy() for n, v in zip(names, [v for v in values if v is not None])}
    return [_tensor(np.asarray(out)) for out in ReferenceEvaluator(node).run(None, arrays)]


def load_onnx(source: str | Path | bytes | onnx.ModelProto, image_size: tuple[int, int] | None = None) -> OnnxModel:
    """Check and import an ONNX model; one clear `ModelError` for anything hyinf cannot use."""
    proto, name = _load(source)
    opset = _opset(proto, name)
    input_name, shape = _image_input(proto, name, image_size)
    inferred = _checked(proto, name, input_name, shape)
    with torch.no_grad():
        module = fx.symbolic_trace(_OnnxGraph(inferred, input_name, shape, name))
    module.eval()
    return OnnxModel(module, shape, opset, hashlib.sha256(proto.SerializeToString()).hexdigest())


def is_onnx(source: object) -> bool:
    """Whether `source` names or holds an ONNX model."""
    return isinstance(source, onnx.ModelProto) or (isinstance(source, str | Path) and str(source).lower().endswith(".onnx"))


__all__ = ["OnnxModel", "is_onnx", "load_onnx", "onnx_reference"]
