"""ONNX models into hyinf: checked at the boundary, then turned into a torch.fx graph of the torch
calls the torch frontend already understands, so they land in the same IR.

Values that do not depend on the image (initializers, Constant and ConstantOfShape nodes, anything
computed from shapes) are folded while importing: shapes are static per image size, so Shape nodes
become constants. Operators without a torch form run through ONNX's reference implementation as one
opaque node (always evaluated fully): an unknown operator never stops a model from running.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto, external_data_helper, helper, numpy_helper, version_converter
from onnx.reference import ReferenceEvaluator
from torch import fx, nn

from hyinf.errors import ModelError
from hyinf.graph.onnx_ops import lookup
from hyinf.graph.sources import is_onnx
from hyinf.paths import check_readable_file
from hyinf.runtime.estimate import check_fits

FIX = "export it again (torch.onnx.export) or check that the file is complete"


def _node_model(node: onnx.NodeProto, inputs: list[Any], opsets: dict[str, int]) -> onnx.ModelProto:
    """One node as a model of its own (its opsets, its inputs' types), for ONNX's reference implementation
    or ONNX Runtime to run with the semantics of the model it came from."""
    given = [n for n in node.input if n]
    values = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(_numpy(v).dtype), None)
              for n, v in zip(given, [v for v in inputs if v is not None])]
    outputs = [helper.make_empty_tensor_value_info(n) for n in node.output if n]
    graph = helper.make_graph([node], "node", values, outputs)
    domains = {"", node.domain}
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, opsets.get(d, 1)) for d in domains],
                             ir_version=onnx.IR_VERSION)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@functools.lru_cache(maxsize=64)
def _session(model: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(bytes.fromhex(model), options, providers=["CPUExecutionProvider"])


def _run_node(runner: str, model: str, index: int, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    proto = onnx.ModelProto.FromString(bytes.fromhex(model)) if runner == "reference" else None
    names = [i.name for i in (proto.graph.input if proto is not None else _session(model).get_inputs())]
    arrays = {name: _numpy(value) for name, value in zip(names, inputs)}
    if proto is not None:
        out = ReferenceEvaluator(proto).run(None, arrays)[index]
    else:
        out = _session(model).run(None, arrays)[index]
    device = inputs[0].device if inputs else torch.device("cpu")
    return torch.from_numpy(np.array(out, copy=True, order="C")).to(device)  # ascontiguousarray makes 0-d arrays 1-d


_ATTRIBUTE_SUFFIX = {"FLOAT": "f", "INT": "i", "STRING": "s", "TENSOR": "t", "FLOATS": "f", "INTS": "i", "STRINGS": "s"}


class _ReferenceNode(torch.autograd.Function):
    """An ONNX node kept as it is when hyinf's programs are exported back to ONNX (the ONNX Runtime
    backend): tracing the reference implementation would record its result as a constant."""

    @staticmethod
    def forward(ctx: Any, runner: str, model: str, index: int, *inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _run_node(runner, model, index, inputs)

    @staticmethod
    def symbolic(g: Any, runner: str, model: str, index: int, *inputs: Any) -> Any:
        proto = onnx.ModelProto.FromString(bytes.fromhex(model)).graph.node[0]
        if proto.domain not in ("", "ai.onnx"):
            raise ModelError(f"operator {proto.domain}.{proto.op_type} cannot run on the ONNX Runtime backend; use backend='torch'")
        attrs: dict[str, Any] = {}
        for a in proto.attribute:
            kind = onnx.AttributeProto.AttributeType.Name(a.type)
            if kind not in _ATTRIBUTE_SUFFIX:
                raise ModelError(f"{proto.op_type}'s attribute {a.name} ({kind}) cannot be exported; use backend='torch'")
            value = onnx.helper.get_attribute_value(a)
            attrs[f"{a.name}_{_ATTRIBUTE_SUFFIX[kind]}"] = torch.from_numpy(numpy_helper.to_array(value).copy()) if kind == "TENSOR" else value
        outputs = len([o for o in proto.output if o])
        result = g.op(proto.op_type, *inputs, outputs=outputs, **attrs)
        return result[index] if outputs > 1 else result


@fx.wrap
def onnx_reference(runner: str, model: str, index: int, *inputs: torch.Tensor) -> torch.Tensor:
    """Output `index` of one ONNX node (a single-node model, serialised as hex) run by ONNX's reference
    implementation (`runner` "reference") or ONNX Runtime ("ort"): operators hyinf has no torch form for."""
    if torch.jit.is_tracing():
        return _ReferenceNode.apply(runner, model, index, *inputs)
    return _run_node(runner, model, index, inputs)


@dataclass(frozen=True)
class OnnxModel:
    """An imported ONNX model: a torch module computing it, the image shape it takes, and what ONNX
    Runtime needs to run the original (to check the module against it)."""

    module: fx.GraphModule
    input_shape: tuple[int, int, int, int]  # (1, C, H, W)
    opset: int
    digest: str  # SHA-256 of the model as loaded: the same file gives the same digest
    original: bytes | str = b""  # the file's path (its external data beside it), or the model's bytes
    input_type: str = "float32"  # what the graph declares: "float32", or "uint8" (pixels 0..255)

    @functools.cached_property
    def _reference_session(self) -> Any:
        """ONNX Runtime's session of the original model, built on first use and kept with this import."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        source = self.original if isinstance(self.original, str) else bytes(self.original)
        try:
            return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types
            raise ModelError(f"ONNX Runtime cannot load the model to check hyinf's import against it: "
                             f"{str(e).strip().splitlines()[0]}") from None

    def reference_output(self, image: torch.Tensor) -> torch.Tensor:
        """ONNX Runtime's output for the original model on `image` (batch 1, in the module's input space)."""
        session = self._reference_session
        array = image.detach().cpu().float().numpy()
        if self.input_type == "uint8":
            array = np.clip(np.round(array), 0, 255).astype(np.uint8)
        feed = session.get_inputs()[0]
        try:
            out = session.run(None, {feed.name: array})[0]
        except Exception as e:
            raise ModelError(f"ONNX Runtime fails on the model with this image: {str(e).strip().splitlines()[0]}") from None
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Load external weights, refusing locations outside the model's folder (absolute, '..', links out)."""
    folder = path.resolve().parent
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelError(f"{path}'s weight {tensor.name!r} points outside the model's folder ({location!r}); "
                             "keep external data files beside the .onnx file")
        check_readable_file(target, f"{path}'s external data file")
    try:
        external_data_helper.load_external_data_for_model(proto, str(folder))
    except OSError as e:
        raise ModelError(f"cannot read {path}'s external weights: {e.strerror or e}") from None
    except ValueError as e:
        raise ModelError(f"{path}'s external weights do not fit their description: {e}") from None


def _load(source: str | Path | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        return source, "the ONNX model"
    name = "the ONNX data" if isinstance(source, bytes) else str(source)
    try:
        if isinstance(source, bytes):
            proto = onnx.load_model_from_string(source)
        else:
            check_readable_file(Path(source), "model file")
            proto = onnx.load(str(source), load_external_data=False)
    except OSError as e:
        raise ModelError(f"cannot read {name}: {e.strerror or e}") from None
    except (DecodeError, ValueError, RuntimeError, RecursionError) as e:
        raise ModelError(f"{name} is not an ONNX model ({type(e).__name__}); {FIX}") from None
    if not proto.graph.node:
        raise ModelError(f"{name} is not an ONNX model (no graph); {FIX}")
    if isinstance(source, bytes):
        if any(external_data_helper.uses_external_data(t) for t in external_data_helper._get_all_tensors(proto)):
            raise ModelError(f"{name} keeps its weights in external files; give the .onnx file's path instead")
    else:
        _external_data(proto, Path(source))
    return proto, name


#: Older models are brought to this opset first (onnx.version_converter), where softmax, squeeze,
#: pad, clip and upsample have their current meaning; where conversion fails, operators are read per opset.
CONVERT_TO = 13


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


def _converted(proto: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, int]:
    """The model at CONVERT_TO where the converter handles it and the result still checks; else as it was."""
    if opset >= CONVERT_TO:
        return proto, opset
    try:
        converted = version_converter.convert_version(proto, CONVERT_TO)
        onnx.checker.check_model(converted)
    except Exception:  # the converter raises assorted errors for operators it cannot adapt
        return proto, opset
    return converted, CONVERT_TO


def _image_input(proto: onnx.ModelProto, name: str, image_size: tuple[int, int] | None) -> tuple[str, tuple[int, int, int, int], str]:
    """The one graph input that is not a weight, its (1, C, H, W) shape and its element type."""
    weights = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1:
        found = ", ".join(i.name for i in inputs) or "none"
        raise ModelError(f"{name} must take one image input, it takes {len(inputs)} ({found}); export the model with the image as its only input")
    value = inputs[0]
    kind = value.type.tensor_type.elem_type
    if kind not in (TensorProto.FLOAT, TensorProto.UINT8):
        raise ModelError(f"{name}'s input {value.name!r} is {TensorProto.DataType.Name(kind).lower()}; hyinf feeds float32 "
                         "(normalised) or uint8 (pixels 0..255) images: export with one of those")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    shown = "x".join("?" if d is None else str(d) for d in dims) or "unknown"
    if len(dims) == 4 and dims[3] in (1, 3, 4) and (dims[1] is None or dims[1] > 4):
        raise ModelError(f"{name}'s input {value.name!r} has shape {shown}, channels last (NHWC); hyinf needs NCHW images: "
                         "export the model with channels first")
    if len(dims) != 4 or dims[1] is None:
        raise ModelError(f"{name}'s input {value.name!r} has shape {shown}; hyinf needs an NCHW image input with a known channel count")
    height, width = dims[2], dims[3]
    if image_size is not None:
        if (height, width) != (None, None) and (height, width) != tuple(image_size):
            raise ModelError(f"{name} takes {height}x{width} images, not {image_size[0]}x{image_size[1]}; leave out --image-size or give {height} {width}")
        height, width = image_size
    if height is None or width is None:
        raise ModelError(f"{name}'s input {value.name!r} has no fixed height and width; give the image size (--image-size H W, or image_size=)")
    if kind == TensorProto.UINT8:
        readers = [n for n in proto.graph.node if value.name in n.input]
        if not all(n.op_type == "Cast" and _attrs(n).get("to") == TensorProto.FLOAT for n in readers):
            raise ModelError(f"{name}'s uint8 input {value.name!r} is read by {', '.join(sorted({n.op_type for n in readers}))}; "
                             "hyinf reads uint8 images only where the model casts them to float first")
    return value.name, (1, dims[1], height, width), "uint8" if kind == TensorProto.UINT8 else "float32"


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


def _activation_bytes(inferred: onnx.ModelProto) -> int:
    """Bytes of every value shape inference sized, for one image: what importing and tracing will hold."""
    total = 0
    for value in (*inferred.graph.value_info, *inferred.graph.output):
        kind = value.type.tensor_type
        dims = [d.dim_value for d in kind.shape.dim]
        if kind.elem_type and all(d > 0 for d in dims):
            total += math.prod(dims) * helper.tensor_dtype_to_np_dtype(kind.elem_type).itemsize
    return total


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


#: How a node runs: ("torch", "") for its torch form, else ("reference" or "ort", its single-node model as hex).
Runner = tuple[str, str]


class _OnnxGraph(nn.Module):
    """Runs an ONNX graph with torch. Built once eagerly on an example image (folding constants and
    shapes), then traced by torch.fx into plain calls."""

    def __init__(self, proto: onnx.ModelProto, input_name: str, shape: tuple[int, int, int, int], name: str, uint8: bool) -> None:
        super().__init__()
        self.input_name, self.uint8 = input_name, uint8
        graph = proto.graph
        if len(graph.output) != 1:
            raise ModelError(f"{name} has {len(graph.output)} outputs; hyinf explains a model with one output of scores")
        self.output = graph.output[0].name
        self.opsets = {("" if imp.domain == "ai.onnx" else imp.domain): imp.version for imp in proto.opset_import}
        self.consts: dict[str, torch.Tensor] = {t.name: _tensor(numpy_helper.to_array(t)) for t in graph.initializer}
        self.steps: list[tuple[onnx.NodeProto, dict[str, Any], list[tuple[int, ...]], Runner]] = []
        example = {input_name: self._quantised(torch.rand(shape, generator=torch.Generator().manual_seed(0)) * (255 if uint8 else 1))}
        for node in graph.node:
            attrs = _attrs(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.consts[node.output[0]] = _constant(attrs)
                continue
            dynamic = [i for i in node.input if i in example]
            if node.op_type == "Shape" and dynamic:  # static per image size: a constant
                dims = list(example[node.input[0]].shape)[attrs.get("start", 0): attrs.get("end", None)]
                self.consts[node.output[0]] = torch.tensor(dims, dtype=torch.int64)
                continue
            values = [self._value(i, example) for i in node.input]
            if not dynamic:
                for out, value in zip(node.output, self._folded(node, values, name)):
                    self.consts[out] = value
                continue
            shapes = [tuple(v.shape) if isinstance(v, torch.Tensor) else () for v in values]
            runner, outs = self._first_run(node, attrs, values, shapes, name)
            for out, value in zip(node.output, outs):
                example[out] = value
            self.steps.append((node, attrs, shapes, runner))
        if self.output not in example:
            raise ModelError(f"{name}'s output does not depend on its image input")

    def _quantised(self, image: torch.Tensor) -> torch.Tensor:
        """A uint8 input's values as the model sees them: whole numbers in 0..255 (kept as float)."""
        return torch.clamp(torch.round(image), 0.0, 255.0) if self.uint8 else image

    def _native(self, node: onnx.NodeProto) -> Any:
        return lookup(node.op_type, self.opsets.get("", 1)) if node.domain in ("", "ai.onnx") else None

    def _first_run(self, node: onnx.NodeProto, attrs: dict[str, Any], values: list[Any], shapes: list[tuple[int, ...]],
                   name: str) -> tuple[Runner, list[Any]]:
        """The node's runner and outputs on the example: its torch form where it has one that takes these
        settings and gives every output, else ONNX's reference implementation, else ONNX Runtime."""
        fn = self._native(node)
        wanted = len([o for o in node.output if o])
        if fn is not None:
            try:
                outs = fn(values, attrs, shapes)
                if len(outs) >= wanted:
                    return ("torch", ""), outs
            except NotImplementedError:
                pass
        model = _node_model(node, values, self.opsets).SerializeToString().hex()
        given = tuple(v for v in values if v is not None)
        failures = []
        for runner in ("reference", "ort"):
            try:
                return (runner, model), [_run_node(runner, model, i, given) for i in range(wanted)]
            except Exception as e:  # either runtime raises its own types for operators it lacks
                failures.append(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        where = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        raise ModelError(f"{name}'s operator {where} (node {node.name or node.output[0]!r}) is one hyinf, ONNX's reference "
                         f"implementation and ONNX Runtime cannot run ({failures[-1][:120]}); export the model with standard ONNX operators")

    def _folded(self, node: onnx.NodeProto, values: list[Any], name: str) -> list[torch.Tensor]:
        """A node all of whose inputs are constants, evaluated once while importing."""
        model = _node_model(node, values, self.opsets).SerializeToString().hex()
        given = tuple(v for v in values if v is not None)
        wanted = len([o for o in node.output if o])
        try:
            return [_run_node("reference", model, i, given).cpu() for i in range(wanted)]
        except Exception as e:
            where = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            raise ModelError(f"{name}'s constant operator {where} cannot be evaluated: {str(e).strip().splitlines()[0][:120]}") from None

    def _value(self, name: str, env: dict[str, Any]) -> Any:
        if not name:
            return None  # an omitted optional input
        return env[name] if name in env else self.consts[name]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {self.input_name: self._quantised(image)}
        for node, attrs, shapes, (runner, model) in self.steps:
            values = [self._value(i, env) for i in node.input]
            if runner == "torch":
                outs = self._native(node)(values, attrs, shapes)
            else:
                given = [v for v in values if v is not None]
                outs = [onnx_reference(runner, model, i, *given) for i in range(len([o for o in node.output if o]))]
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


def load_onnx(source: str | Path | bytes | onnx.ModelProto, image_size: tuple[int, int] | None = None) -> OnnxModel:
    """Check and import an ONNX model; one clear `ModelError` for anything hyinf cannot use."""
    proto, name = _load(source)
    opset = _opset(proto, name)
    input_name, shape, input_type = _image_input(proto, name, image_size)
    _checked(proto, name, input_name, shape)  # the file as given must pass, not only its conversion
    converted, opset = _converted(proto, opset)
    inferred = _checked(converted, name, input_name, shape)
    check_fits(_activation_bytes(inferred), torch.device("cpu"), f"importing {name} for {shape[2]}x{shape[3]} images")
    try:
        with torch.no_grad():
            module = fx.symbolic_trace(_OnnxGraph(inferred, input_name, shape, name, input_type == "uint8"))
    except ModelError:
        raise
    except Exception as e:  # a malformed graph the checker let through (values of the wrong kind for an operator)
        raise ModelError(f"{name} cannot be imported: {type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}; "
                         f"{FIX}") from None
    module.eval()
    original = str(source) if isinstance(source, str | Path) else proto.SerializeToString()
    return OnnxModel(module, shape, opset, hashlib.sha256(proto.SerializeToString()).hexdigest(), original, input_type)


__all__ = ["OnnxModel", "is_onnx", "load_onnx", "onnx_reference"]
