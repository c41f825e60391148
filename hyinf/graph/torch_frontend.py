"""PyTorch frontend: an nn.Module (or a torch.export graph) becomes the IR plus a TorchProgram.

The model is traced with torch.fx and run once on a batch-1 example by a small interpreter that
records every value (shape propagation). Only image-dependent tensors become IR nodes. Weights,
buffers and values computed from them are folded into the kernels as constants; image-dependent
non-tensor values (``x.size(0)``, the tuple a ``chunk`` returns) are re-evaluated inside the kernels
of the nodes that read them, so they follow the batch size at run time.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import Argument, map_arg

from hyinf.errors import ModelError
from hyinf.graph.functional import functionalize
from hyinf.graph.ir import Graph, Node, Op
from hyinf.graph.torch_ops import Spec, canonical_fn, classify_call, classify_module, op_name, out_of_place
from hyinf.runtime.program import LocalKernel, TorchProgram
from hyinf.runtime.verify import check_torch

INPUT_NAME = "image"


class _Recorder(fx.Interpreter):
    """Runs the traced model once and keeps every node's value (shapes and folded constants)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:
            raise ModelError(f"the model fails on an example image at {n.format_node()}: {e}") from e
        self.values[n.name] = result
        return result


def _symbolic_trace(model: nn.Module) -> fx.GraphModule:
    # Arguments after the image keep their defaults, so `if extra is not None:` traces as the call would run.
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    try:
        return fx.symbolic_trace(model, concrete_args=concrete or None)
    except Exception as e:  # fx raises many types; all mean the same thing to a user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "does not support item assignment" in first:
            raise ModelError(f"the model assigns into part of a tensor (x[...] = v), which torch.fx cannot trace: use "
                             "mode='naive', or write it out of place (torch.where, torch.cat)") from e
        raise ModelError(
            f"torch.fx cannot trace {type(model).__name__}: {first}. Make forward() free of data-dependent "
            "Python control flow, or use mode='naive'"
        ) from e


def trace_torch(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device = "cpu") -> TorchProgram:
    """Build the IR and kernels of `model` for images of `input_shape` = (1, C, H, W)."""
    device = torch.device(device)
    if isinstance(model, torch.jit.ScriptModule):
        return _opaque_program(model, input_shape, device)
    original = model
    model = copy.deepcopy(model).eval().to(device).requires_grad_(False)  # kernels hold plain tensors (exportable as constants)
    gm = model if isinstance(model, fx.GraphModule) else _symbolic_trace(model)
    functionalize(gm)  # later readers of an in-place write read its result
    for m in gm.modules():  # the kernels run out of place: in-place activations would overwrite stored ones
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    example = torch.rand(input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    recorder = _Recorder(gm)
    with torch.no_grad():
        recorder.run(example)
        program = _Builder(gm, recorder.values, device).build()
        check_torch(original, program, example, batches=True)
    return program


def _opaque_program(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> TorchProgram:
    """A model fx cannot look into (TorchScript) runs as one opaque node: always full evaluation."""
    model = model.to(device).eval()
    with torch.no_grad():
        out = model(torch.zeros(input_shape, device=device))
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"the model's output must be a tensor of scores, got {type(out).__name__}")
    nodes = (
        Node(INPUT_NAME, Op.INPUT, (), tuple(input_shape), (2, 3), label="image"),
        Node("model", Op.OPAQUE, (INPUT_NAME,), tuple(out.shape), label=type(model).__name__),
    )
    return TorchProgram(Graph(nodes, INPUT_NAME, "model"), {INPUT_NAME: lambda x: x, "model": model}, {}, device, {})


class _Builder:
    def __init__(self, gm: fx.GraphModule, values: dict[str, Any], device: torch.device) -> None:
        self.gm, self.values, self.device = gm, values, device
        self.dependent: set[str] = set()
        self.nodes: dict[str, Node] = {}
        self.full: dict[str, Callable[..., torch.Tensor]] = {}
        self.local: dict[str, LocalKernel] = {}
        self.inplace: dict[str, Callable[..., torch.Tensor]] = {}
        self.linear: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.input = ""

    def build(self) -> TorchProgram:
        output: str | None = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                self._placeholder(n)
            elif n.op == "output":
                output = self._output(n)
            elif any(a.name in self.dependent for a in n.all_input_nodes):
                self.dependent.add(n.name)
                if isinstance(self.values[n.name], torch.Tensor):
                    self._node(n)
        assert output is not None
        graph = Graph(tuple(self.nodes.values()), self.input, output)
        # The kernels read constants only; the traced image's values would live as long as the program.
        self.values = {name: value for name, value in self.values.items() if name not in self.dependent}
        return TorchProgram(graph, self.full, self.local, self.device, self.inplace, self.linear)

    def _placeholder(self, n: fx.Node) -> None:
        if self.nodes:
            if not n.args:  # a second input without a default cannot be occluded or filled in
                raise ModelError(f"the model takes a second input '{n.target}'; hyinf explains single-image models")
            return
        value = self.values[n.name]
        self.dependent.add(n.name)
        self.input = n.name
        self.nodes[n.name] = Node(n.name, Op.INPUT, (), tuple(value.shape), (2, 3), label="image")
        self.full[n.name] = lambda x: x

    def _output(self, n: fx.Node) -> str:
        result = n.args[0]
        if isinstance(result, tuple | list) and len(result) == 1:  # torch.export returns a flat tuple
            result = result[0]
        if not isinstance(result, fx.Node) or result.name not in self.nodes:
            kind = type(self.values.get(getattr(result, "name", ""), result)).__name__
            raise ModelError(f"the model's output must be one tensor of scores computed from the image, got {kind}")
        return result.name

    def _node(self, n: fx.Node) -> None:
        value: torch.Tensor = self.values[n.name]
        leaves, fn, inplace = self._expression(n)
        inputs = [self.nodes[leaf] for leaf in leaves]
        shape = tuple(value.shape)
        proto = Node(n.name, Op.OPAQUE, tuple(i.name for i in inputs), shape, (2, 3) if len(shape) == 4 else None)
        spec, label, canonical = self._classify(n, inputs, proto)
        spatial = spec.spatial
        if spec.op is Op.OPAQUE or (spatial is not None and max(spatial) >= len(shape)):
            spec = Spec(Op.OPAQUE, None)
            spatial = (2, 3) if len(shape) == 4 else None
        # A reshape's kernel takes the target shape from the IR, so only the data is an input.
        node_inputs = proto.inputs[:1] if spec.op is Op.RESHAPE else proto.inputs
        self.nodes[n.name] = Node(n.name, spec.op, node_inputs, shape, spatial, spec.window, spec.macs, label, canonical)
        self.full[n.name] = spec.full or fn
        if inplace is not None and spec.full is None:
            self.inplace[n.name] = inplace
        if spec.local is not None:
            self.local[n.name] = spec.local
        if spec.linear is not None and spec.full is None:
            self.linear[n.name] = spec.linear

    def _classify(self, n: fx.Node, inputs: list[Node], proto: Node) -> tuple[Spec, str, str]:
        """The node's spec, its label and its canonical operation name."""
        call, index = n, None
        if n.op == "call_function" and op_name(n.target) == "getitem":
            source = n.args[0]
            if isinstance(source, fx.Node) and source.name not in self.nodes:  # an item of a tuple result
                call, index = source, n.args[1]
        if call.op == "call_module":
            module = self.gm.get_submodule(call.target)
            label, fn = f"{call.target} ({type(module).__name__})", canonical_fn(type(module).__name__)
            if index is not None:
                return Spec(Op.OPAQUE, None), label, fn
            return classify_module(module, inputs, proto, self.device), label, fn
        name = op_name(call.target)
        args = map_arg(call.args, lambda a: self.values[a.name])
        kwargs = map_arg(call.kwargs, lambda a: self.values[a.name])
        label = name if index is None else f"{name}[{index}]"
        first = call.args[0] if call.args else None
        constants = [
            self.values[a.name]
            for a in call.all_input_nodes
            if a.name not in self.dependent and isinstance(self.values[a.name], torch.Tensor)
        ]
        first_is_data = isinstance(first, fx.Node) and first.name in self.nodes
        spec = classify_call(name, args, kwargs, inputs, proto, self.device, first_is_data=first_is_data, constants=constants, index=index)
        return spec, label, canonical_fn(name)

    def _expression(self, root: fx.Node) -> tuple[list[str], Callable[..., torch.Tensor], Callable[..., torch.Tensor] | None]:
        """The IR inputs of `root`, a kernel computing it from them (inlining non-tensor steps), and,
        where the call has an in-place form, a kernel that may overwrite its first input instead."""
        leaves: list[str] = []

        def visit(a: fx.Node) -> None:
            if a.name in self.nodes:
                if a.name not in leaves:
                    leaves.append(a.name)
            elif a.name in self.dependent:
                for b in a.all_input_nodes:
                    visit(b)

        for a in root.all_input_nodes:
            visit(a)

        def make(inplace: bool) -> Callable[..., torch.Tensor]:
            def kernel(*vals: torch.Tensor) -> torch.Tensor:
                env: dict[str, Any] = dict(zip(leaves, vals))

                def evaluate(node: fx.Node) -> Any:
                    if node.name not in env:
                        env[node.name] = self._call(node, evaluate) if node.name in self.dependent else self.values[node.name]
                    return env[node.name]

                try:
                    return self._call(root, evaluate, inplace)
                finally:  # `evaluate` refers to itself: the cycle must not keep the values alive until a collection
                    env.clear()

            return kernel

        first = root.args[0] if root.args else None
        writes_first = isinstance(first, fx.Node) and bool(leaves) and first.name == leaves[0] and self._has_inplace_form(root)
        return leaves, make(False), make(True) if writes_first else None

    def _has_inplace_form(self, n: fx.Node) -> bool:
        if n.op == "call_module":
            return isinstance(getattr(self.gm.get_submodule(n.target), "inplace", None), bool)
        return "inplace" in n.kwargs or out_of_place(n.target) != n.target

    def _call(self, n: fx.Node, evaluate: Callable[[fx.Node], Any], inplace: bool = False) -> Any:
        """Run one traced call; out of place unless `inplace` (then in place where the call can be)."""
        args: Argument = map_arg(n.args, evaluate)
        kwargs: dict[str, Any] = dict(map_arg(n.kwargs, evaluate))  # type: ignore[arg-type]
        if "inplace" in kwargs:
            kwargs["inplace"] = inplace
        target = n.target if inplace else out_of_place(n.target)
        if n.op == "call_module":
            module = self.gm.get_submodule(n.target)
            if inplace and isinstance(getattr(module, "inplace", None), bool):
                module = copy.copy(module)  # a shallow twin: same weights, in-place flag set
                module.inplace = True
            return module(*args, **kwargs)  # type: ignore[misc]
        if n.op == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)  # type: ignore[index]
        return target(*args, **kwargs)  # type: ignore[misc]
