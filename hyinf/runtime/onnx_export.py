"""Modules traced into ONNX graphs for the ORT backend, their weights kept out of the graphs.

The TorchScript exporter infers every node's shapes with the values of the constants it reads, so a
weight read by a node is converted for that node: exporting vgg16's classifier tail (471 MB of
weights) took 9.2 s, and 0.04 s with the weights handed to the tracer as inputs (it recognises a
tensor it was given by identity, wherever the module reads it). Writing them back into the graph
cost 6 s more in protobuf copies. So `export_onnx` traces the weights a run of the module reads
(`read_weights`) as inputs and leaves them in the graph as initializers whose data is external;
`add_weights` hands ORT the tensors when a session opens (ORT copies them in before it optimizes,
so its folding and pre-packing are as before). Graphs stay small: a few MB to write, cache and read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import onnxruntime as ort
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from hyinf.errors import ModelError

OPSET = 17
# Floating tensors at least this large are passed as inputs while tracing; smaller constants stay
# constants, where shape inference may need their values (a reshape's target, a slice's bounds).
WEIGHT_ELEMENTS = 4096


class _Reads(TorchFunctionMode):
    """Notes the tensors torch functions read that no function call made: weights and other constants."""

    def __init__(self) -> None:
        super().__init__()
        self.made: dict[int, torch.Tensor] = {}  # held, so that their ids are not reused during the run
        self.read: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and id(t) not in self.made:
                self.read.setdefault(id(t), t)
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.made[id(t)] = t
        return out


def read_weights(run: Callable[[], Any]) -> list[torch.Tensor]:
    """The floating tensors of at least WEIGHT_ELEMENTS that `run` reads and did not make, in order of first read."""
    with _Reads() as reads:
        run()
    return [t for t in reads.read.values() if t.is_floating_point() and t.numel() >= WEIGHT_ELEMENTS]


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the tensors of `module` a graph would hold as weights (floating, of WEIGHT_ELEMENTS or more)."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if t.is_floating_point() and t.numel() >= WEIGHT_ELEMENTS)


def weight_name(k: int) -> str:
    return f"weight{k}"


def weight_fingerprint(t: torch.Tensor) -> str:
    """A weight's shape, type and about a thousand of its values, hashed: enough to tell whether a graph
    stored with a list of weights reads the same ones in another process, without hashing them all."""
    flat = t.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // 1000)].cpu().contiguous().numpy()
    return hashlib.sha256(f"{tuple(t.shape)} {t.dtype}".encode() + sample.tobytes()).hexdigest()[:24]


def add_weights(options: ort.SessionOptions, used: Sequence[int], weights: Sequence[torch.Tensor]) -> None:
    """Give a session the values of the weights (indices into `weights`) its graph holds as external data."""
    if used:
        values = [ort.OrtValue.ortvalue_from_numpy(weights[k].detach().cpu().contiguous().numpy()) for k in used]
        options.add_external_initializers([weight_name(k) for k in used], values)


@contextlib.contextmanager
def _row_pastes() -> Iterator[None]:
    """Export `index_copy` along the first axis (the runtime's pastes of pixel rows) as ScatterND over
    rows, several times faster in ORT than the default element-wise ScatterElements."""

    def index_copy(g: Any, self: Any, dim: Any, index: Any, source: Any) -> Any:
        from torch.onnx import symbolic_helper, symbolic_opset9

        if symbolic_helper._get_const(dim, "i", "dim") != 0:
            return symbolic_opset9.index_copy(g, self, dim, index, source)
        rows = g.op("Unsqueeze", index, g.op("Constant", value_t=torch.tensor([-1])))
        return g.op("ScatterND", self, rows, source)

    torch.onnx.register_custom_op_symbolic("aten::index_copy", index_copy, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::index_copy", OPSET)


class _Given(nn.Module):
    """`module` called with its own arguments; the weights after them are only there to be traced as inputs."""

    def __init__(self, module: nn.Module, count: int) -> None:
        super().__init__()
        self.module, self.count = module, count

    def forward(self, *args: torch.Tensor) -> Any:
        return self.module(*args[: self.count])


def _external(model: bytes, weights: Sequence[torch.Tensor]) -> tuple[bytes, list[int]]:
    """The exported model with the weight inputs it kept turned into initializers whose data is external,
    and those weights' indices."""
    import onnx

    proto = onnx.load_from_string(model)
    names = {weight_name(k): k for k in range(len(weights))}
    used = [names[i.name] for i in proto.graph.input if i.name in names]
    kept = [i for i in proto.graph.input if i.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    for k in used:
        w = weights[k]
        tensor = onnx.TensorProto(name=weight_name(k), data_type=onnx.helper.np_dtype_to_tensor_dtype(torch.empty(0, dtype=w.dtype).numpy().dtype),
                                  dims=list(w.shape), data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", "hyinf-weights"), ("offset", "0"), ("length", str(w.numel() * w.element_size()))):
            tensor.external_data.add(key=key, value=value)
        proto.graph.initializer.append(tensor)
    return proto.SerializeToString(), used


def export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], outputs: list[str],
                dynamic: dict[str, dict[int, str]] | None = None, weights: Sequence[torch.Tensor] = ()) -> tuple[bytes, list[int]]:
    """The module traced into a serialized ONNX model, and the indices of the `weights` (tensors the module
    reads besides its arguments, see `read_weights`) it holds as external data (`add_weights` gives them)."""
    buffer = io.BytesIO()
    weight_names = [weight_name(k) for k in range(len(weights))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
        try:  # the TorchScript exporter: a few seconds where torch.export takes minutes
            traced = _Given(module, len(args)) if weights else module  # (the ORT profiler's scope names stay as they are)
            with _row_pastes():
                torch.onnx.export(traced, (*args, *weights), buffer, dynamo=False, opset_version=OPSET,
                                  input_names=[*names, *weight_names], output_names=outputs, dynamic_axes=dynamic)
            return _external(buffer.getvalue(), weights) if weights else (buffer.getvalue(), [])
        except ModelError:
            raise
        except Exception as e:
            first = str(e).splitlines()[0]
        try:  # torch.export decomposes what the TorchScript exporter lacks (e.g. adaptive pooling that upsamples)
            shapes = None if dynamic is None else tuple({0: torch.export.Dim.AUTO} for _ in args)
            program = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=outputs, dynamic_shapes=shapes, verbose=False)
            return program.model_proto.SerializeToString(), []  # the weights in the graph
        except Exception as e:
            raise ModelError(f"the model cannot be lowered to ONNX for the ort backend ({first}; {str(e).splitlines()[0]}); use backend='torch'") from e
