"""What kind of model a source is, told without importing the framework that reads it."""

from __future__ import annotations

from pathlib import Path


def is_onnx(source: object) -> bool:
    """Whether `source` names an .onnx file or holds an onnx.ModelProto."""
    kind = type(source)
    if kind.__name__ == "ModelProto" and kind.__module__.startswith("onnx"):
        return True
    return isinstance(source, str | Path) and str(source).lower().endswith(".onnx")
