"""What the process keeps for models it explains again: their traced programs and ORT engines."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from hyinf.kept import Kept

T = TypeVar("T")
Key = tuple[Hashable, ...]


class ModelCache(Generic[T]):
    """Values built from a model (and settings), kept so that explaining more images builds them once.

    A torch module is recognised by identity while it lives, and by its parameters' and buffers'
    storage, in-place version counters, shapes and a sample of their values (writes through `.data`
    leave the version counter as it was), and its modules' train/eval flags: a training step,
    `load_state_dict` or `train()` makes a new entry. An ONNX model is recognised by its digest. The
    oldest entry goes when more than `size` are held (each may hold a copy of a model's weights).
    """

    def __init__(self, size: int) -> None:
        self.kept: Kept[tuple[Callable[[], Any], T]] = Kept(size)

    @staticmethod
    def identity(model: nn.Module | str) -> tuple[Callable[[], Any], Key]:
        if isinstance(model, nn.Module):
            state = tuple((t.data_ptr(), t._version, tuple(t.shape), _sample(t)) for t in model.state_dict(keep_vars=True).values())
            return weakref.ref(model), (id(model), state, tuple(m.training for m in model.modules()))
        return (lambda: True), ("onnx", model)  # the digest of an ONNX model's bytes

    def get(self, model: nn.Module | str, settings: Key, build: Callable[[], T]) -> T:
        """The value for `model` (a module, or an ONNX model's digest) and `settings`, built when missing."""
        alive, ident = self.identity(model)
        return self.kept.get((ident, settings), lambda: (alive, build()), valid=lambda entry: entry[0]() is not None)[1]


def _sample(tensor: torch.Tensor, count: int = 64) -> bytes:
    """Up to `count` evenly spaced values of a tensor, as bytes: a few microseconds per tensor."""
    flat = tensor.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // count)][:count].cpu().numpy().tobytes()


def content_digest(model: nn.Module | str) -> str:
    """What a model computes with, as a digest: its parameters' and buffers' names, types, shapes and
    values (an ONNX model's identity already is the digest of its bytes). With the graph's structural
    fingerprint it keys artefacts built from the model."""
    if isinstance(model, str):
        return model
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
