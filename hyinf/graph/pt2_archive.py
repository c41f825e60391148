"""torch.export (.pt2) archives, opened without running code from them.

`torch.export.load` unpickles some payloads (weights or constants marked `use_pickle`, opaque and
custom objects, legacy `.pt` state dicts, sample inputs that fail the safe unpickler), loads
AOTInductor shared libraries, evaluates symbolic shape expressions with sympy (an `eval`), and
resolves a node's target to any attribute of `torch`. Each of those can run code from the file, so
the archive is read once into memory, checked here member by member against what a plain exported
CNN holds, and only then handed to torch from that same copy.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyinf.errors import ModelError

_PAYLOADS = ("data/weights/", "data/constants/")
_ALLOWED_DIRS = ("models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/", ".data/")
_ALLOWED_FILES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
# Symbolic shapes are parsed by sympy.sympify (an eval): only symbols, integers, arithmetic and the
# shape functions torch's deserializer itself provides may appear.
_SYMPY_FUNCTIONS = {
    "FloorDiv",
    "ModularIndexing",
    "Where",
    "PythonMod",
    "Mod",
    "CleanDiv",
    "CeilToInt",
    "FloorToInt",
    "CeilDiv",
    "LShift",
    "RShift",
    "IntTrueDiv",
    "FloatTrueDiv",
    "ToFloat",
    "TruncToInt",
    "Max",
    "Min",
}
_EXPR_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|\d+(?:\.\d+)?|\*\*|//|[-+*/%(),<>=!]=?)")
_SYMBOL = re.compile(r"[a-z]\d+")
# Python callables a graph may name besides torch operators: plain arithmetic and item access.
_OPERATORS = {
    "getitem",
    "add",
    "sub",
    "mul",
    "truediv",
    "floordiv",
    "mod",
    "pow",
    "neg",
    "pos",
    "abs",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and_",
    "or_",
    "not_",
    "invert",
    "lshift",
    "rshift",
}
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims|higher_order)\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?")


def _refuse(path: Path, why: str) -> ModelError:
    return ModelError(
        f"{path} is refused: {why}. hyinf never runs code from a model file; "
        "export the model again with torch.export.save (plain tensor weights) or give it as ONNX"
    )


def _members(archive: zipfile.ZipFile, path: Path) -> dict[str, str]:
    """Archive paths without the archive's root folder -> full member names."""
    names = archive.namelist()
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise _refuse(path, "it is not a torch.export archive (expected one root folder)")
    return {n.split("/", 1)[1]: n for n in names if not n.endswith("/")}


def _walk(value: Any) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Every (key, value, owner) pair of a JSON document, depth first."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                yield key, child, item
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _check_expression(text: str, path: Path) -> None:
    pos = 0
    while pos < len(text.rstrip()):
        token = _EXPR_TOKEN.match(text, pos)
        if token is None:
            raise _refuse(path, f"a symbolic shape {text[:60]!r} is not arithmetic")
        name = token.group("name")
        if name is not None and name not in _SYMPY_FUNCTIONS and not _SYMBOL.fullmatch(name):
            raise _refuse(path, f"a symbolic shape names {name!r}, which is not a shape symbol")
        pos = token.end()


def _check_target(target: str, path: Path) -> None:
    if _OP_TARGET.fullmatch(target):
        return
    if target.startswith("_operator.") and target.split(".", 1)[1] in _OPERATORS:
        return
    if target.startswith("math.") and re.fullmatch(r"math\.[a-z0-9_]+", target):
        return
    raise _refuse(path, f"its graph calls {target!r}, which is not a torch operator")


def _check_payload_config(config: Any, directory: str, path: Path) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(path, f"its {directory} index is malformed")
    for name, meta in entries.items():
        if (
            not isinstance(meta, dict)
            or meta.get("use_pickle") is not False
            or not isinstance(meta.get("tensor_meta"), dict)
        ):
            raise _refuse(path, f"{name!r} is stored as a pickle, which can run code when loaded")
        if not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
            raise _refuse(path, f"{name!r} is stored as a Python object, not a tensor")


def _check(data: bytes, path: Path) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise _refuse(path, "it is not a torch.export archive (not a zip file)") from None
    with archive:
        members = _members(archive, path)
        for name in members:
            if name not in _ALLOWED_FILES and not name.startswith(_ALLOWED_DIRS):
                raise _refuse(
                    path, f"it holds {name}, which is not part of a plain exported program (compiled code?)"
                )
            if name.startswith(_PAYLOADS) and name.endswith(".pt"):
                raise _refuse(path, f"its {name} is a pickled state dict (an older archive format)")
        if "archive_version" not in members or "models/model.json" not in members:
            raise _refuse(
                path,
                "it is not a torch.export archive of this torch version (no archive_version or models/model.json)",
            )
        for name, full in members.items():
            if name.startswith(_PAYLOADS) and name.endswith("_config.json"):
                _check_payload_config(_json(archive.read(full), name, path), name.split("/")[1], path)
            elif name.startswith("data/constants/") and not name.startswith("data/constants/tensor_"):
                raise _refuse(path, f"its constant {name} is a Python object")
            elif name.startswith("models/"):
                _check_program(_json(archive.read(full), name, path), path)
            elif name.startswith("data/sample_inputs/"):
                try:  # torch retries what this safe unpickler refuses with the unsafe one: refuse it first
                    torch.load(io.BytesIO(archive.read(full)), weights_only=True)
                except Exception:
                    raise _refuse(path, f"its sample inputs ({name}) are not plain tensors") from None


def _json(raw: bytes, name: str, path: Path) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise _refuse(path, f"its {name} is not valid JSON") from None


def _check_program(program: Any, path: Path) -> None:
    for key, value, owner in _walk(program):
        if key == "expr_str" and isinstance(value, str):
            _check_expression(value, path)
        elif key == "target" and "inputs" in owner and isinstance(value, str):
            _check_target(value, path)


def load_exported(path: Path) -> nn.Module:
    """The module of a torch.export archive, after checking nothing in it runs code when loaded."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror}") from None
    _check(data, path)
    try:
        return torch.export.load(io.BytesIO(data)).module()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load {path} as a torch.export program: {first}") from None
