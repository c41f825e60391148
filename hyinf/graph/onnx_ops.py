"""ONNX operators as torch calls, one small function per operator.

Each function receives the operator's inputs (torch tensors: the image-dependent ones are fx proxies
while tracing, the others constants) and its attributes, and returns its outputs. They call the
torch functions the torch frontend already classifies by name (conv2d, max_pool2d, batch_norm,
relu, add, cat, reshape, linear, ...), so an ONNX model lands in the same IR as a torch model.
Operators not listed here run through ONNX's reference implementation as one opaque node, and so
do listed ones whose settings a function declines (it raises NotImplementedError). Operators whose
meaning changed across opsets are registered per version (`since`), as ONNX's own schemas are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import onnx
import torch
import torch.nn.functional as F

Shape = tuple[int, ...]
OpFn = Callable[[list[Any], dict[str, Any], list[Shape]], list[Any]]

OPS: dict[str, dict[int, OpFn]] = {}  # operator -> {first opset of this meaning: function}


def op(*names: str, since: int = 1) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS.setdefault(name, {})[since] = fn
        return fn

    return register


def lookup(name: str, opset: int) -> OpFn | None:
    """The torch form of operator `name` as opset `opset` defines it, or None."""
    versions = [v for v in OPS.get(name, {}) if v <= opset]
    return OPS[name][max(versions)] if versions else None


def _spatial_pads(attrs: dict[str, Any], in_shape: Shape, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from `pads` or `auto_pad`."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for axis in range(2):
            size, s, extent = in_shape[2 + axis], strides[axis], (kernel[axis] - 1) * dilations[axis] + 1
            total = max(0, (math.ceil(size / s) - 1) * s + extent - size)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        return begin[0], begin[1], end[0], end[1]
    if auto == "VALID":
        return 0, 0, 0, 0
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    return pads[0], pads[1], pads[2], pads[3]


def _window(attrs: dict[str, Any], in_shape: Shape, kernel: Sequence[int]) -> tuple[list[int], list[int], tuple[int, int, int, int]]:
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    return strides, dilations, _spatial_pads(attrs, in_shape, kernel, strides, dilations)


def _symmetric(pads: tuple[int, int, int, int]) -> bool:
    return pads[0] == pads[2] and pads[1] == pads[3]


@op("Conv")
def conv(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    weight, bias = x[1], x[2] if len(x) > 2 else None
    kernel = list(attrs.get("kernel_shape", weight.shape[2:]))
    strides, dilations, pads = _window(attrs, shapes[0], kernel)
    data = x[0]
    if not _symmetric(pads):
        data, pads = F.pad(data, (pads[1], pads[3], pads[0], pads[2])), (0, 0, 0, 0)
    return [F.conv2d(data, weight, bias, strides, (pads[0], pads[1]), dilations, attrs.get("group", 1))]


def _pool(x: list[Any], attrs: dict[str, Any], shapes: list[Shape], kind: str) -> list[Any]:
    kernel = list(attrs["kernel_shape"])
    strides, dilations, pads = _window(attrs, shapes[0], kernel)
    ceil = bool(attrs.get("ceil_mode", 0))
    data = x[0]
    fits = _symmetric(pads) and pads[0] <= kernel[0] // 2 and pads[1] <= kernel[1] // 2
    if kind == "max":
        if not fits:
            data, pads = F.pad(data, (pads[1], pads[3], pads[0], pads[2]), value=-math.inf), (0, 0, 0, 0)
        return [F.max_pool2d(data, kernel, strides, (pads[0], pads[1]), dilations, ceil)]
    include = bool(attrs.get("count_include_pad", 0))
    if not fits:
        if not include:
            raise NotImplementedError("AveragePool with asymmetric padding that excludes the padding")
        data, pads = F.pad(data, (pads[1], pads[3], pads[0], pads[2])), (0, 0, 0, 0)
    return [F.avg_pool2d(data, kernel, strides, (pads[0], pads[1]), ceil, include)]


@op("MaxPool")
def max_pool(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    if attrs.get("storage_order", 0) or len(shapes[0]) != 4:
        raise NotImplementedError("MaxPool with storage_order or not 2-D")
    return _pool(x, attrs, shapes, "max")


@op("AveragePool")
def average_pool(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    if len(shapes[0]) != 4 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise NotImplementedError("AveragePool that is not 2-D or has dilations")
    return _pool(x, attrs, shapes, "avg")


@op("GlobalAveragePool")
def global_average_pool(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    return [F.adaptive_avg_pool2d(x[0], 1)]


@op("ReduceMean")
def reduce_mean(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    axes = attrs.get("axes")
    if axes is None and len(x) > 1 and x[1] is not None:
        axes = [int(a) for a in x[1].tolist()]
    rank = len(shapes[0])
    dims = tuple(sorted(a % rank for a in axes)) if axes else tuple(range(rank))
    return [torch.mean(x[0], dims, keepdim=bool(attrs.get("keepdims", 1)))]


@op("BatchNormalization")
def batch_norm(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    if attrs.get("training_mode", 0):
        raise NotImplementedError("BatchNormalization with the batch's own statistics")
    return [F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, attrs.get("epsilon", 1e-5))]


@op("LRN")
def lrn(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    return [F.local_response_norm(x[0], attrs["size"], attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0))]


@op("Relu")
def relu(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    return [F.relu(x[0])]


@op("LeakyRelu")
def leaky_relu(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    return [F.leaky_relu(x[0], attrs.get("alpha", 0.01))]


@op("Sigmoid")
def sigmoid(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    return [torch.sigmoid(x[0])]


@op("Tanh")
def tanh(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    return [torch.tanh(x[0])]


@op("HardSigmoid")
def hard_sigmoid(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    return [torch.clamp(x[0] * alpha + beta, 0.0, 1.0)]


@op("HardSwish")
def hard_swish(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    return [F.hardswish(x[0])]


@op("Clip")
def clip(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    low = x[1] if len(x) > 1 and x[1] is not None else attrs.get("min")
    high = x[2] if len(x) > 2 and x[2] is not None else attrs.get("max")
    low = float(low) if low is not None else None
    high = float(high) if high is not None else None
    return [x[0] if low is None and high is None else torch.clamp(x[0], low, high)]


def _binary(fn: Callable[[Any, Any], Any]) -> OpFn:
    return lambda x, attrs, shapes: [fn(x[0], x[1])]


for _name, _fn in (("Add", torch.add), ("Sub", torch.sub), ("Mul", torch.mul)):
    op(_name)(_binary(_fn))


@op("Div")
def div(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    if not x[0].is_floating_point():  # ONNX divides integers with truncation
        return [torch.div(x[0], x[1], rounding_mode="trunc")]
    return [torch.div(x[0], x[1])]


@op("Sum")
def sum_(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    total = x[0]
    for value in x[1:]:
        total = torch.add(total, value)
    return [total]


@op("Concat")
def concat(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    return [torch.cat(list(x), attrs["axis"])]


@op("Flatten")
def flatten(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    axis = attrs.get("axis", 1) % max(len(shapes[0]), 1)
    if axis == 1:
        return [torch.flatten(x[0], 1)]
    return [torch.reshape(x[0], (math.prod(shapes[0][:axis]), math.prod(shapes[0][axis:])))]


@op("Reshape")
def reshape(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    target = [int(v) for v in x[1].tolist()]
    if not attrs.get("allowzero", 0):
        target = [shapes[0][i] if v == 0 else v for i, v in enumerate(target)]
    if target and shapes[0] and target[0] == shapes[0][0] == 1:
        # Exporters write the example's batch of 1 into the target; keep the batch the caller runs.
        rest = target[1:]
        if -1 in rest:
            known = math.prod(v for v in rest if v != -1)
            rest[rest.index(-1)] = math.prod(shapes[0]) // max(known, 1)
        target = [-1, *rest]
    return [torch.reshape(x[0], tuple(target))]


@op("Transpose")
def transpose(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    perm = attrs.get("perm", list(reversed(range(len(shapes[0])))))
    return [x[0].permute(*perm)]


@op("Gemm")
def gemm(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    if attrs.get("transA", 0) or not isinstance(x[1], torch.Tensor) or isinstance(x[1], torch.fx.Proxy):
        raise NotImplementedError("Gemm with a transposed or image-dependent second matrix")
    weight = x[1] if attrs.get("transB", 0) else x[1].T
    bias = x[2] if len(x) > 2 and x[2] is not None else None
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    return [F.linear(x[0], weight * alpha, None if bias is None else bias * beta)]


@op("MatMul")
def matmul(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    if isinstance(x[1], torch.fx.Proxy) or x[1].dim() != 2:
        raise NotImplementedError("MatMul of two image-dependent values")
    return [F.linear(x[0], x[1].T)]


@op("Softmax", since=13)
def softmax(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    return [F.softmax(x[0], attrs.get("axis", -1))]


@op("LogSoftmax", since=13)
def log_softmax(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    return [F.log_softmax(x[0], attrs.get("axis", -1))]


def _flattened(fn: Callable[[Any, int], Any]) -> OpFn:
    """Softmax and LogSoftmax before opset 13: over everything from `axis` (default 1) on, as one axis."""
    def run(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
        axis = attrs.get("axis", 1) % max(len(shapes[0]), 1)
        if axis == 0:
            raise NotImplementedError("a softmax over the batch axis")
        if axis == len(shapes[0]) - 1:
            return [fn(x[0], -1)]
        return [torch.reshape(fn(torch.flatten(x[0], axis), -1), (-1, *shapes[0][1:]))]
    return run


op("Softmax")(_flattened(F.softmax))
op("LogSoftmax")(_flattened(F.log_softmax))


@op("Dropout", "Identity")
def identity(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    if len(x) > 2 and x[2] is not None:  # Dropout's training_mode input
        raise NotImplementedError("Dropout with a training_mode input")
    return [x[0]]


@op("Cast")
def cast(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    if attrs.get("to") != onnx.TensorProto.FLOAT:
        raise NotImplementedError("Cast to another type than float")
    return [x[0].to(torch.float32)]


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@op("Pad")
def pad(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    pads = attrs.get("pads")
    if pads is None:
        pads = [int(v) for v in x[1].tolist()]
    value = attrs.get("value", 0.0)
    if len(x) > 2 and x[2] is not None:
        value = float(x[2])
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in _PAD_MODES:
        raise NotImplementedError(f"Pad mode {mode}")
    mode = _PAD_MODES[mode]
    rank = len(shapes[0])
    begin, end = pads[:rank], pads[rank:]
    if any(begin[:2]) or any(end[:2]) or rank != 4 or (len(x) > 3 and x[3] is not None):
        raise NotImplementedError("Pad of other axes than the spatial ones")
    return [F.pad(x[0], (begin[3], end[3], begin[2], end[2]), mode, value)]


@op("Slice")
def slice_(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    if "starts" in attrs:  # opset 9: attributes
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = x[1].tolist(), x[2].tolist()
        axes = x[3].tolist() if len(x) > 3 and x[3] is not None else None
        steps = x[4].tolist() if len(x) > 4 and x[4] is not None else None
    rank = len(shapes[0])
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index = [slice(None)] * rank
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step < 1:
            raise NotImplementedError("Slice with a negative step")
        size = shapes[0][axis % rank]
        index[axis % rank] = slice(max(-size, min(start, size)), max(-size, min(end, size)), step)
    return [x[0][tuple(index)]]


@op("Split")
def split(x: list[Any], attrs: dict[str, Any], shapes: list[Shape]) -> list[Any]:
    axis = attrs.get("axis", 0) % len(shapes[0])
    sizes = attrs.get("split")
    if sizes is None and len(x) > 1 and x[1] is not None:
        sizes = [int(v) for v in x[1].tolist()]
    if sizes is None:
        parts = attrs.get("num_outputs")
        if parts is None:
            raise NotImplementedError("Split whose output count is not in the node")
        sizes = [math.ceil(shapes[0][axis] / parts)] * (parts - 1)
        sizes.append(shapes[0][axis] - sum(sizes))
    pieces = torch.split(x[0], list(sizes), axis)
    return [pieces[i] for i in range(len(sizes))]
