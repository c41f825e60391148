"""Graphs exported with their weights as external data: which tensors are weights, and sessions given
them compute what torch does."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import torch
from torch import nn

from hyinf.runtime.onnx_export import WEIGHT_ELEMENTS, add_weights, export_onnx, read_weights, weight_fingerprint


class _Reader(nn.Module):
    """Reads two large weights (one twice), a small one, and tensors it makes."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.big = torch.randn(64, 128, generator=generator)
        self.other = torch.randn(128, 64, generator=generator)
        self.small = torch.randn(64, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        made = torch.ones(128, 128) * 0.5  # made by the run: not a weight, though as large
        h = torch.relu(x @ self.other + self.small) @ self.big
        return (h @ made) @ self.other + (x @ self.other).sum()


def test_weights_are_the_large_floating_tensors_read_and_not_made() -> None:
    module, x = _Reader(), torch.randn(40, 128)
    weights = read_weights(lambda: module(x))
    assert [id(w) for w in weights] == [id(x), id(module.other), id(module.big)]  # first-read order; inputs too: callers drop them
    assert module.small.numel() < WEIGHT_ELEMENTS


def test_a_graph_holds_its_weights_as_external_data_and_a_session_gets_them() -> None:
    module, x = _Reader(), torch.randn(3, 128)
    weights = [module.other, module.big, torch.zeros(4096)]  # the last is never read: left out of the graph
    model, used = export_onnx(module, (x,), ["x"], ["y"], {"x": {0: "n"}, "y": {0: "n"}}, weights)
    assert used == [0, 1]
    proto = onnx.load_from_string(model)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert sorted(t.name for t in external) == ["weight0", "weight1"] and [i.name for i in proto.graph.input] == ["x"]
    assert module.big.numpy().tobytes()[:4096] not in model and module.other.numpy().tobytes()[:4096] not in model
    options = ort.SessionOptions()
    add_weights(options, used, weights)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    other = torch.randn(5, 128)
    got = torch.from_numpy(session.run(None, {"x": other.numpy()})[0])
    torch.testing.assert_close(got, module(other), rtol=1e-4, atol=1e-3)


def test_fingerprints_tell_weights_apart() -> None:
    a = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    assert weight_fingerprint(a) == weight_fingerprint(a.clone())
    assert weight_fingerprint(a) != weight_fingerprint(a * 2)
    assert weight_fingerprint(a) != weight_fingerprint(a.reshape(128, 64))
    assert weight_fingerprint(a) != weight_fingerprint(a.double())
