"""How each PyTorch operator maps onto the IR: op kind, spatial axes, sliding-window geometry.

`classify` sees one traced call with its arguments evaluated on a batch-1 example (tensors as real
values, so shapes are known) and the IR nodes of its image-dependent inputs. It works for
module calls, torch functions, tensor methods and the aten ops of a torch.export graph alike,
because functions are looked up by their plain name ("conv2d", "max_pool2d", "mean", ...).
Anything it does not recognise, or recognises with settings it cannot treat locally, is OPAQUE.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hyinf.graph.ir import Node, Op, Window
from hyinf.runtime.program import LocalKernel

#: Operators that act on every spatial location independently (given eval mode).
ELEMENTWISE = frozenset(
    """relu relu6 hardtanh silu hardswish hardsigmoid sigmoid gelu tanh leaky_relu elu selu celu mish
    softplus softsign logsigmoid prelu dropout dropout2d feature_dropout alpha_dropout identity
    contiguous clone detach add sub rsub mul truediv div neg clamp clip abs exp sqrt rsqrt pow square
    reciprocal log erf type_as float to maximum minimum stochastic_depth
    _native_batch_norm_legit_no_training batch_norm local_response_norm""".split()
)
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.GELU,
    nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.PReLU, nn.Dropout,
    nn.Dropout2d, nn.AlphaDropout, nn.Identity,
)
RESHAPES = frozenset({"view", "reshape", "flatten", "_unsafe_view", "view_copy"})
REDUCTIONS = frozenset({"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp"})
_INPLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul, operator.itruediv: operator.truediv}


@dataclass(frozen=True)
class Spec:
    """The IR view of one call; `full` overrides the traced call where the IR needs its own kernel."""

    op: Op
    spatial: tuple[int, int] | None
    window: Window | None = None
    macs: int = 1
    local: LocalKernel | None = None
    full: Callable[..., torch.Tensor] | None = None
    linear: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (weight, bias) where the op is F.linear of its input


_FN_ALIASES = {
    "batchnorm": "batch_norm", "native_batch_norm_legit_no_training": "batch_norm", "convolution": "conv",
    "maxpool": "max_pool", "avgpool": "avg_pool", "adaptiveavgpool": "adaptive_avg_pool", "adaptivemaxpool": "adaptive_max_pool",
    "iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "div", "truediv": "div", "constantpad": "pad", "zeropad": "pad",
}


def canonical_fn(name: str) -> str:
    """One name per operation whatever spelled it: Conv2d, conv2d and aten convolution all give "conv"."""
    n = re.sub(r"[123]d$", "", name.lower().strip("_"))
    return _FN_ALIASES.get(n, n)


def op_name(target: Any) -> str:
    """A plain name for a call target: aten::conv2d, torch.conv2d and F.conv2d all give "conv2d"."""
    if isinstance(target, str):
        name = target
    elif isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        name = target._schema.name.split("::")[-1] if hasattr(target, "_schema") else str(target)
    else:
        target = _INPLACE.get(target, target)
        name = getattr(target, "__name__", str(target))
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def out_of_place(target: Any) -> Any:
    """The non-mutating twin of an in-place call, so stored activations are never overwritten."""
    if target in _INPLACE:
        return _INPLACE[target]
    if isinstance(target, str):
        return op_name(target)
    name = getattr(target, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):
        for namespace in (torch, F, torch.Tensor):
            twin = getattr(namespace, name[:-1], None)
            if twin is not None and getattr(namespace, name, None) is target:
                return twin
    return target


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(v)
    return (v[0], v[0]) if len(v) == 1 else (int(v[0]), int(v[1]))


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _is_nchw(node: Node) -> bool:
    return len(node.shape) == 4 and node.spatial == (2, 3)


def _axis(dim: int, rank: int) -> int:
    return dim % rank


def _conv_padding(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(pad_before, pad_after) per axis for conv's int, tuple, 'valid' or 'same' padding."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        total = [dilation[a] * (kernel[a] - 1) for a in (0, 1)]
        before = (total[0] // 2, total[1] // 2)
        return before, (total[0] - before[0], total[1] - before[1])
    p = _pair(padding)
    return p, p


def _pool_window(inp: Node, out: Node, kernel: Any, stride: Any, padding: Any, dilation: Any = 1) -> Window:
    k = _pair(kernel)
    s = _pair(stride) if stride not in (None, [], ()) else k
    p, d = _pair(padding), _pair(dilation)
    rows, cols = inp.spatial_size
    orows, ocols = out.spatial_size
    # ceil_mode may let the last window read past the padded border: pad_after covers that.
    after = tuple(max(p[a], (o - 1) * s[a] + d[a] * (k[a] - 1) + 1 - n - p[a]) for a, n, o in ((0, rows, orows), (1, cols, ocols)))
    return Window(k, s, d, p, after)  # type: ignore[arg-type]


def _conv(inp: Node, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int) -> Spec:
    k = (weight.shape[2], weight.shape[3])
    s, d = _pair(stride), _pair(dilation)
    before, after = _conv_padding(padding, k, d)
    window = Window(k, s, d, before, after)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, s, 0, d, groups)

    return Spec(Op.CONV, (2, 3), window, macs=weight.shape[1] * k[0] * k[1], local=LocalKernel(fn))


def _max_pool(inp: Node, out: Node, kernel: Any, stride: Any, padding: Any, dilation: Any) -> Spec:
    w = _pool_window(inp, out, kernel, stride, padding, dilation)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, w.kernel, w.stride, 0, w.dilation)

    return Spec(Op.MAX_POOL, (2, 3), w, macs=w.kernel[0] * w.kernel[1], local=LocalKernel(fn, float("-inf")))


def _avg_pool(inp: Node, out: Node, kernel: Any, stride: Any, padding: Any, ceil_mode: bool, count_include_pad: bool, divisor_override: int | None, device: torch.device) -> Spec:
    w = _pool_window(inp, out, kernel, stride, padding)
    # The divisor of every output element, read off the full op itself so all of torch's rules hold.
    ones = torch.ones((1, 1, *inp.spatial_size), device=device)
    args = (w.kernel, w.stride, _pair(padding), ceil_mode, count_include_pad)
    divisor = F.avg_pool2d(ones, *args, divisor_override=1) / F.avg_pool2d(ones, *args, divisor_override=divisor_override)
    area = w.kernel[0] * w.kernel[1]

    def fn(x: torch.Tensor) -> torch.Tensor:  # windows hold their padding, so every mean is over the whole kernel
        return F.avg_pool2d(x, w.kernel, w.stride, 0)  # not divisor_override: ONNX exporters drop it

    return Spec(Op.AVG_POOL, (2, 3), w, macs=area, local=LocalKernel(fn, 0.0, divisor / area))


def _adaptive(kind: str, inp: Node, out: Node, device: torch.device) -> Spec:
    if not _is_nchw(inp):
        return Spec(Op.OPAQUE, None)
    (rows, cols), (orows, ocols) = inp.spatial_size, out.spatial_size
    if (orows, ocols) == (rows, cols):  # one element per bin: exactly the identity, on windows too
        return Spec(Op.POINTWISE, (2, 3), full=lambda x: x)
    if kind == "avg" and (orows, ocols) == (1, 1):
        return Spec(Op.GLOBAL_AVG_POOL, (2, 3))
    if rows % orows == 0 and cols % ocols == 0:  # equal bins: an ordinary pooling with kernel = stride
        k = (rows // orows, cols // ocols)
        if kind == "avg":
            return _avg_pool(inp, out, k, k, 0, False, True, None, device)
        return _max_pool(inp, out, k, k, 0, 1)
    return Spec(Op.OPAQUE, (2, 3))


def _pad(inp: Node, pad: Sequence[int], mode: str, value: float | None) -> Spec:
    if mode != "constant" or len(pad) != 4 or min(pad) < 0 or not _is_nchw(inp):
        return Spec(Op.OPAQUE, inp.spatial)
    left, right, top, bottom = pad
    return Spec(Op.PAD, (2, 3), Window((1, 1), pad_before=(top, left), pad_after=(bottom, right)), local=LocalKernel(lambda x: x, float(value or 0.0)))


def _spatial_of_elementwise(inputs: Sequence[Node], out: Node, constants: Sequence[torch.Tensor]) -> tuple[int, int] | None | bool:
    """Output spatial axes of a broadcasting elementwise call, None if it has none, False if it cannot run on windows."""
    rank = len(out.shape)
    found: tuple[int, int] | None = None
    for node in inputs:
        if node.spatial is None:
            continue
        shift = rank - len(node.shape)
        axes = (node.spatial[0] + shift, node.spatial[1] + shift)
        if node.spatial_size == (1, 1) and out.shape[axes[0]] * out.shape[axes[1]] > 1:
            continue  # broadcast over space: geometry marks the output changed everywhere
        if found not in (None, axes) or (out.shape[axes[0]], out.shape[axes[1]]) != node.spatial_size:
            return False
        found = axes
    if found is None:
        return None
    for c in constants:  # a constant the size of the map would not fit a window
        shape = (1,) * (rank - c.dim()) + tuple(c.shape)
        if len(shape) == rank and (shape[found[0]] > 1 or shape[found[1]] > 1):
            return False
    return found


def _reduce(inp: Node, dims: Any, keepdim: bool) -> Spec:
    rank = len(inp.shape)
    if inp.spatial is None:
        return Spec(Op.POINTWISE, None)
    dims = {_axis(d, rank) for d in ([dims] if isinstance(dims, int) else dims or range(rank))}
    if dims == set(inp.spatial) and _is_nchw(inp):
        return Spec(Op.GLOBAL_AVG_POOL, (2, 3) if keepdim else None)
    if dims & set(inp.spatial) or 0 in dims:
        return Spec(Op.OPAQUE, None)
    if keepdim:
        return Spec(Op.POINTWISE, inp.spatial)
    spatial = tuple(a - sum(d < a for d in dims) for a in inp.spatial)
    return Spec(Op.POINTWISE, spatial)  # type: ignore[arg-type]


def _reshape(inp: Node, out: Node) -> Spec:
    target = out.shape[1:]

    def full(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *target)

    keeps_space = (
        inp.spatial is not None
        and inp.spatial == (len(inp.shape) - 2, len(inp.shape) - 1)
        and tuple(out.shape[-2:]) == inp.spatial_size
        and len(out.shape) >= 3
    )
    if not keeps_space:
        return Spec(Op.RESHAPE, None, full=full)
    middle = target[:-2]

    def windowed(x: torch.Tensor) -> torch.Tensor:  # same reshape with the window's own sizes
        return x.reshape(x.shape[0], *middle, *x.shape[-2:])

    return Spec(Op.RESHAPE, (len(out.shape) - 2, len(out.shape) - 1), full=windowed)


def classify_module(module: nn.Module, inputs: Sequence[Node], out: Node, device: torch.device) -> Spec:
    inp = inputs[0] if inputs else None
    if inp is None or len(inputs) != 1:
        return Spec(Op.OPAQUE, None)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or not _is_nchw(inp):
            return Spec(Op.OPAQUE, (2, 3))
        return _conv(inp, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups)
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices or not _is_nchw(inp):
            return Spec(Op.OPAQUE, None)
        return _max_pool(inp, out, module.kernel_size, module.stride, module.padding, module.dilation)
    if isinstance(module, nn.AvgPool2d):
        if not _is_nchw(inp):
            return Spec(Op.OPAQUE, None)
        return _avg_pool(inp, out, module.kernel_size, module.stride, module.padding, module.ceil_mode, module.count_include_pad, module.divisor_override, device)
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        if isinstance(module, nn.AdaptiveMaxPool2d) and module.return_indices:
            return Spec(Op.OPAQUE, None)
        return _adaptive("avg" if isinstance(module, nn.AdaptiveAvgPool2d) else "max", inp, out, device)
    if isinstance(module, nn.ConstantPad2d | nn.ZeroPad2d):
        return _pad(inp, module.padding, "constant", module.value)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        ok = not module.training and module.track_running_stats and module.running_mean is not None
        return Spec(Op.POINTWISE if ok else Op.OPAQUE, inp.spatial if ok else None)
    if isinstance(module, ELEMENTWISE_MODULES):
        return Spec(Op.POINTWISE, inp.spatial)
    if isinstance(module, nn.Flatten):
        return _reshape(inp, out)
    if isinstance(module, nn.Linear):
        if type(module).forward is not nn.Linear.forward:  # a subclass may compute something else
            return _channel_last(inp, 1, module.in_features)
        return _linear(inp, module.weight, module.bias)
    if isinstance(module, nn.LayerNorm):
        return _channel_last(inp, len(module.normalized_shape))
    if isinstance(module, nn.Softmax | nn.LogSoftmax):
        return _along(inp, module.dim if module.dim is not None else 1)
    return Spec(Op.OPAQUE, None)


def _channel_last(inp: Node, trailing: int, macs: int = 1) -> Spec:
    """Linear and LayerNorm act on trailing axes: pointwise when those hold no spatial axis."""
    rank = len(inp.shape)
    if inp.spatial is not None and max(inp.spatial) >= rank - trailing:
        return Spec(Op.OPAQUE, None)
    return Spec(Op.POINTWISE, inp.spatial, macs=macs)


def _linear(inp: Node, weight: torch.Tensor, bias: torch.Tensor | None) -> Spec:
    """F.linear of the input with constant weights: recorded, so the runtime can apply them to parts of it."""
    spec = _channel_last(inp, 1, weight.shape[-1])
    return dataclasses.replace(spec, linear=(weight, bias)) if spec.op is Op.POINTWISE else spec


def _along(inp: Node, dim: int) -> Spec:
    """An op along one axis (softmax, cat, chunk, narrow): pointwise unless that axis is spatial or the batch."""
    axis = _axis(dim, len(inp.shape))
    if axis == 0 or (inp.spatial is not None and axis in inp.spatial):
        return Spec(Op.OPAQUE, None)
    return Spec(Op.POINTWISE, inp.spatial)


def classify_call(
    name: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    inputs: Sequence[Node],
    out: Node,
    device: torch.device,
    *,
    first_is_data: bool,
    constants: Sequence[torch.Tensor] = (),
    index: int | None = None,
) -> Spec:
    """Spec of a function or method call.

    `first_is_data` says the first argument is the image-dependent input; `constants` are the tensor
    arguments that do not depend on the image; `index` is set when `out` is one item of the call's
    tuple result.
    """
    if not inputs:
        return Spec(Op.OPAQUE, None)
    inp = inputs[0]
    single = len(inputs) == 1 and first_is_data
    if name in ("conv2d", "convolution") and single and _is_nchw(inp):
        weight, bias = _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
        if name == "convolution" and (_arg(args, kwargs, 6, "transposed", False)):
            return Spec(Op.OPAQUE, (2, 3))
        groups = _arg(args, kwargs, 8 if name == "convolution" else 6, "groups", 1)
        return _conv(inp, weight, bias, _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0), _arg(args, kwargs, 5, "dilation", 1), groups)
    if name in ("max_pool2d", "max_pool2d_with_indices") and single and _is_nchw(inp):
        if _arg(args, kwargs, 6, "return_indices", False) or (name == "max_pool2d_with_indices" and index != 0):
            return Spec(Op.OPAQUE, None)
        return _max_pool(inp, out, _arg(args, kwargs, 1, "kernel_size"), _arg(args, kwargs, 2, "stride"), _arg(args, kwargs, 3, "padding", 0), _arg(args, kwargs, 4, "dilation", 1))
    if name == "avg_pool2d" and single and _is_nchw(inp):
        return _avg_pool(
            inp, out, _arg(args, kwargs, 1, "kernel_size"), _arg(args, kwargs, 2, "stride"), _arg(args, kwargs, 3, "padding", 0),
            _arg(args, kwargs, 4, "ceil_mode", False), _arg(args, kwargs, 5, "count_include_pad", True),
            _arg(args, kwargs, 6, "divisor_override"), device,
        )
    if name in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d") and single:
        return _adaptive("avg", inp, out, device)
    if name == "adaptive_max_pool2d" and single and index in (None, 0):
        return _adaptive("max", inp, out, device)
    if name in ("pad", "constant_pad_nd") and single:
        mode = "constant" if name == "constant_pad_nd" else _arg(args, kwargs, 2, "mode", "constant")
        return _pad(inp, _arg(args, kwargs, 1, "pad"), mode, _arg(args, kwargs, 3 if name == "pad" else 2, "value", 0.0))
    if name in RESHAPES and first_is_data:  # sizes read off the input are recomputed by the kernel
        return _reshape(inp, out)
    if name in ("permute", "transpose", "swapaxes", "movedim") and single and inp.spatial is not None:
        rank = len(inp.shape)
        if name == "permute":
            perm = [_axis(d, rank) for d in (args[1:] if len(args) > 2 else args[1])]
        else:
            a, b = _axis(args[1], rank), _axis(args[2], rank)
            perm = list(range(rank))
            if name == "movedim":
                perm.insert(b, perm.pop(a))
            else:
                perm[a], perm[b] = perm[b], perm[a]
        if perm[0] != 0:
            return Spec(Op.OPAQUE, None)
        return Spec(Op.POINTWISE, (perm.index(inp.spatial[0]), perm.index(inp.spatial[1])))
    if name in ("cat", "concat", "concatenate"):
        tensors = args[0]
        if len(constants) or len(tensors) != len(inputs):
            return Spec(Op.OPAQUE, None)
        spatial = _spatial_of_elementwise(inputs, out, [])
        if spatial is False or any(n.spatial != spatial for n in inputs):
            return Spec(Op.OPAQUE, None)
        return _along(inp, _arg(args, kwargs, 1, "dim", 0))
    if name in ("chunk", "split", "split_with_sizes", "tensor_split", "narrow", "unbind") and single:
        dim = _arg(args, kwargs, 1, "dim", 0) if name in ("narrow", "unbind") else _arg(args, kwargs, 2, "dim", 0)
        return _along(inp, dim) if name != "unbind" else Spec(Op.OPAQUE, None)
    if name == "getitem" and single and index is None:
        return _slice(inp, args[1])
    if name in ("softmax", "log_softmax") and single:
        return _along(inp, _arg(args, kwargs, 1, "dim"))
    if name in REDUCTIONS and single:
        dims = _arg(args, kwargs, 1, "dim")
        if name in ("max", "min") and (dims is None or index not in (None, 0)):
            return Spec(Op.OPAQUE, None)
        if name in ("max", "min") and isinstance(dims, torch.Tensor):
            return _elementwise(inputs, out, constants)
        spec = _reduce(inp, dims, bool(_arg(args, kwargs, 2, "keepdim", False)))
        if spec.op is Op.GLOBAL_AVG_POOL and name != "mean":
            return Spec(Op.OPAQUE, spec.spatial)
        return spec
    if name in ("linear", "layer_norm") and single:
        if name == "linear":
            return _linear(inp, _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias"))
        return _channel_last(inp, len(_arg(args, kwargs, 1, "normalized_shape")))
    if name == "batch_norm" and _arg(args, kwargs, 5, "training", False):
        return Spec(Op.OPAQUE, None)
    if name == "_native_batch_norm_legit_no_training" and index not in (None, 0):
        return Spec(Op.OPAQUE, None)
    if name == "stochastic_depth" and _arg(args, kwargs, 3, "training", True):
        return Spec(Op.OPAQUE, None)
    if name in ELEMENTWISE:
        return _elementwise(inputs, out, constants)
    return Spec(Op.OPAQUE, None)


def _elementwise(inputs: Sequence[Node], out: Node, constants: Sequence[torch.Tensor]) -> Spec:
    spatial = _spatial_of_elementwise(inputs, out, constants)
    if spatial is False:
        return Spec(Op.OPAQUE, None)
    return Spec(Op.POINTWISE, spatial)  # type: ignore[arg-type]


def _slice(inp: Node, index: Any) -> Spec:
    """x[...] with slices only, leaving the batch and spatial axes whole."""
    index = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, slice) for i in index) or len(index) > len(inp.shape):
        return Spec(Op.OPAQUE, None)
    whole = {0, *(inp.spatial or ())}
    if any(axis in whole and i != slice(None) for axis, i in enumerate(index)):
        return Spec(Op.OPAQUE, None)
    return Spec(Op.POINTWISE, inp.spatial)

