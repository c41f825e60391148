"""In-place writes made explicit in a traced graph, so it can be evaluated piecewise.

hyinf runs every node out of place (stored activations must not be overwritten). A model that
writes into a value and reads it again (`x.clamp_(-1, 1)` then `conv(x)`) would then read the
old value. This pass finds every in-place write in the fx graph and points the later readers of
the written value at the write's result, which is what eager PyTorch computes. Writes that other
tensors can see through aliasing (into a view, into something viewed elsewhere, into a weight, or
into part of a tensor with `x[i] = v`) cannot be rewritten that way and are refused.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
from torch import fx, nn

from hyinf.errors import ModelError
from hyinf.graph.torch_ops import op_name

#: Calls whose result may share memory with their first argument: a write through either is seen by both.
VIEWS = frozenset(
    {
        "view",
        "view_as",
        "reshape",
        "reshape_as",
        "flatten",
        "unflatten",
        "squeeze",
        "unsqueeze",
        "transpose",
        "permute",
        "t",
        "T",
        "mT",
        "expand",
        "expand_as",
        "narrow",
        "select",
        "getitem",
        "chunk",
        "split",
        "unbind",
        "tensor_split",
        "as_strided",
        "diagonal",
        "detach",
        "movedim",
        "moveaxis",
        "swapaxes",
        "swapdims",
        "contiguous",
        "alias",
        "real",
        "imag",
        "data",
        "unfold",
        "_unsafe_view",
        "view_copy",
        "dropout",
        "identity",
        "to",
        "type_as",
        "float",
    }
)
#: Modules that may return their input itself (dropout in eval mode) or a view of it.
_VIEW_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Flatten,
    nn.Unflatten,
)
_FIX = "use mode='naive' (--mode naive), or make forward() write out of place"


def _inplace_flag(n: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether the call has an `inplace` argument set to True (F.relu(x, inplace=True), nn.ReLU(inplace=True)).
    Dropout writes nothing in eval mode, in which hyinf evaluates models."""
    if n.op == "call_module":
        module = gm.get_submodule(str(n.target))
        return getattr(module, "inplace", False) is True and not isinstance(
            module, nn.modules.dropout._DropoutNd
        )
    if n.op != "call_function" or not callable(n.target):
        return False
    try:
        bound = inspect.signature(n.target).bind(*n.args, **n.kwargs)
    except (TypeError, ValueError):
        return n.kwargs.get("inplace") is True
    return bound.arguments.get("inplace") is True and bound.arguments.get("training") is not False


def _writes_first(n: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether `n` overwrites its first argument."""
    if n.op == "call_method":
        name = str(n.target)
        return name.endswith("_") and not name.startswith("_")
    if n.op == "call_function":
        if n.target is operator.setitem:
            raise ModelError(
                f"the model assigns into part of a tensor ({n.format_node()}), which hyinf cannot evaluate "
                f"piecewise; {_FIX}"
            )
        name = getattr(n.target, "__name__", "")
        if n.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv) or (
            name.endswith("_") and not name.startswith("_")
        ):
            return True
    return _inplace_flag(n, gm)


def _shares_memory(n: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether `n`'s result may be (a view of) its first argument."""
    if n.op == "call_module":
        return isinstance(gm.get_submodule(str(n.target)), _VIEW_MODULES)
    return n.op in ("call_function", "call_method") and op_name(n.target) in VIEWS


def functionalize(gm: fx.GraphModule) -> None:
    """Rewrite `gm`'s graph so every in-place write's later readers read its result; refuse unsafe writes."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for n in list(gm.graph.nodes):
        if n.op not in ("call_function", "call_method", "call_module"):
            continue
        if "out" in n.kwargs:
            raise ModelError(
                f"the model writes a result into an existing tensor (out=) at {n.format_node()}; {_FIX}"
            )
        if not _writes_first(n, gm):
            continue
        first: Any = n.args[0] if n.args else None
        if not isinstance(first, fx.Node):
            continue
        what = f"{n.format_node()} writes in place into"
        if first.op == "get_attr":
            raise ModelError(
                f"the model changes its own weights while it runs ({what} {first.target}); {_FIX}"
            )
        if n.op == "call_method" and not hasattr(torch.Tensor, str(n.target)[:-1]):
            raise ModelError(f"{what} {first.name} and has no out-of-place form hyinf can run; {_FIX}")
        aliases = [u for u in first.users if u is not n and _shares_memory(u, gm)]
        if _shares_memory(first, gm) or aliases:
            seen = (
                first.args[0].name
                if _shares_memory(first, gm) and isinstance(first.args[0], fx.Node)
                else aliases[0].name
            )
            raise ModelError(
                f"the model overwrites a value in place that another shares memory with ({what} {first.name}, "
                f"which shares memory with {seen}), which hyinf cannot evaluate piecewise; {_FIX}"
            )
        first.replace_all_uses_with(n, delete_user_cb=lambda user: order[user] > order[n])
    gm.recompile()
