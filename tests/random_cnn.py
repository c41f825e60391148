"""Random CNN DAGs for property tests: convolutions of every geometry, pools, branches, SE blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import assume
from hypothesis import strategies as st
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "identity": nn.Identity}


@dataclass(frozen=True)
class Block:
    kind: str
    params: tuple


class RandomCNN(nn.Module):
    """Blocks in sequence, then global average pooling or flattening and a linear layer."""

    def __init__(self, blocks: list[Block], channels: int, classes: int, head: str) -> None:
        super().__init__()
        self.blocks = blocks
        self.layers = nn.ModuleList()
        self.groups: list[int] = []  # channel-shuffle groups, fixed at construction so tracing sees ints
        for b in blocks:
            self.groups.append(2 if channels % 2 == 0 else 1)
            layer, channels = self._make(b, channels)
            self.layers.append(layer)
        self.head = head
        self.fc = nn.LazyLinear(classes)  # sized by the first call

    @staticmethod
    def _make(b: Block, c: int) -> tuple[nn.Module, int]:
        if b.kind == "conv":
            out, k, s, p, d, g, act = b.params
            conv = nn.Conv2d(c, out * g, k, s, p, d, groups=g) if c % g == 0 else nn.Conv2d(c, out * g, k, s, p, d)
            return nn.Sequential(conv, ACTIVATIONS[act]()), out * g
        if b.kind == "maxpool":
            k, s, p, d, ceil = b.params
            return nn.MaxPool2d(k, s, p, d, ceil_mode=ceil), c
        if b.kind == "avgpool":
            k, s, p, ceil, include = b.params
            return nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=include), c
        if b.kind == "pad":
            left, right, top, bottom = b.params
            return nn.ZeroPad2d((left, right, top, bottom)), c
        if b.kind == "residual":
            (k,) = b.params
            return nn.Sequential(nn.Conv2d(c, c, k, padding="same"), nn.BatchNorm2d(c), nn.ReLU()), c
        if b.kind == "concat":
            out, k = b.params
            return nn.ModuleList([nn.Conv2d(c, out, 1), nn.Conv2d(c, out, k, padding=k // 2)]), 2 * out
        if b.kind == "se":
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, max(1, c // 2), 1), nn.ReLU(), nn.Conv2d(max(1, c // 2), c, 1), nn.Sigmoid()), c
        if b.kind == "shuffle":
            return nn.Identity(), c
        raise ValueError(b.kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b, layer, groups in zip(self.blocks, self.layers, self.groups):
            if b.kind == "residual":
                x = x + layer(x)
            elif b.kind == "concat":
                x = torch.cat([layer[0](x), F.relu(layer[1](x))], dim=1)
            elif b.kind == "se":
                x = x * layer(x)
            elif b.kind == "shuffle":
                n, c, h, w = x.size()
                x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
            else:
                x = layer(x)
        x = x.mean((2, 3)) if self.head == "gap" else torch.flatten(x, 1)
        return self.fc(x)


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    kind = draw(st.sampled_from(["conv", "conv", "maxpool", "avgpool", "pad", "residual", "concat", "se", "shuffle"]))
    if kind == "conv":
        k = draw(st.integers(1, 4))
        return Block(kind, (draw(st.integers(1, 4)), k, draw(st.integers(1, 2)), draw(st.integers(0, k)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2])), draw(st.sampled_from(sorted(ACTIVATIONS)))))
    if kind == "maxpool":
        k = draw(st.integers(1, 3))
        return Block(kind, (k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)), draw(st.integers(1, 2)), draw(st.booleans())))
    if kind == "avgpool":
        k = draw(st.integers(1, 3))
        return Block(kind, (k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)), draw(st.booleans()), draw(st.booleans())))
    if kind == "pad":
        return Block(kind, tuple(draw(st.integers(0, 2)) for _ in range(4)))
    if kind == "residual":
        return Block(kind, (draw(st.sampled_from([1, 3])),))
    if kind == "concat":
        return Block(kind, (draw(st.integers(1, 3)), draw(st.sampled_from([1, 3, 5]))))
    return Block(kind, ())


@st.composite
def random_cnns(draw: st.DrawFn) -> tuple[RandomCNN, torch.Tensor, tuple[int, int], tuple[int, int]]:
    """A model, an image, a patch and a stride."""
    h, w = draw(st.integers(6, 20)), draw(st.integers(6, 20))
    chosen = draw(st.lists(blocks(), min_size=1, max_size=5))
    head = draw(st.sampled_from(["gap", "flatten"]))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    try:
        model = RandomCNN(chosen, 3, 5, head).eval()
        image = torch.randn(1, 3, h, w)
        with torch.no_grad():
            model(image)
    except RuntimeError:  # a geometry that shrinks the map to nothing
        assume(False)
    patch = (draw(st.integers(1, h)), draw(st.integers(1, w)))
    stride = (draw(st.integers(1, h)), draw(st.integers(1, w)))
    return model, image[0], patch, stride
