"""The gallery of bad inputs: every one ends with exactly one line saying what is wrong, a non-zero
exit (or one of hyinf's own errors from the API), no traceback, and no file written or changed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn

import hyinf
from hyinf.cli import main
from hyinf.errors import HyinfError


def _onnx(
    path: Path,
    *,
    shape=(1, 3, 16, 16),
    elem=TensorProto.FLOAT,
    head=(),
    tail=None,
    first="x",
    opset=13,
    extra_opsets=(),
    inputs=1,
) -> Path:
    weights = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "W"
    )
    tail = tail or [
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
    ]
    nodes = [
        *head,
        helper.make_node("Conv", [first, "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        *tail,
    ]
    graph_inputs = [helper.make_tensor_value_info("x", elem, list(shape))]
    graph_inputs += [
        helper.make_tensor_value_info(f"extra{i}", TensorProto.FLOAT, [1]) for i in range(inputs - 1)
    ]
    graph = helper.make_graph(
        nodes, "g", graph_inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weights]
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in extra_opsets]],
    )
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every bad (and a few good) file the gallery uses, made once."""
    d = tmp_path_factory.mktemp("gallery")
    f: dict[str, Path] = {"dir": d}
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
        d / "photo.png"
    )
    f["photo"] = d / "photo.png"
    (d / "folder.png").mkdir()
    f["folder"] = d / "folder.png"
    os.mkfifo(d / "fifo.png")
    f["fifo"] = d / "fifo.png"
    (d / "notes.png").write_text("not an image")
    f["text_image"] = d / "notes.png"
    (d / "cut.png").write_bytes(f["photo"].read_bytes()[:200])
    f["truncated"] = d / "cut.png"
    Image.fromarray(np.full((8, 8), 300.0, np.float32), mode="F").save(d / "hdr.tiff")
    f["hdr"] = d / "hdr.tiff"
    Image.new("1", (14_000, 14_000)).save(d / "bomb.png")
    f["bomb"] = d / "bomb.png"
    os.mkfifo(d / "fifo.json")
    f["fifo_plan"] = d / "fifo.json"
    os.mkfifo(d / "fifo.pt2")
    f["fifo_model"] = d / "fifo.pt2"
    (d / "folder.pt2").mkdir()
    f["folder_model"] = d / "folder.pt2"
    (d / "taken" / "heatmap.npy").mkdir(parents=True)
    f["taken"] = d / "taken"
    (d / "existing.txt").write_text("keep me")
    f["existing"] = d / "existing.txt"
    (d / "notes.onnx").write_text("not a model")
    f["text_onnx"] = d / "notes.onnx"
    whole = _onnx(d / "whole.onnx").read_bytes()
    (d / "cut.onnx").write_bytes(whole[: len(whole) // 2])
    f["cut_onnx"] = d / "cut.onnx"
    f["nhwc"] = _onnx(d / "nhwc.onnx", shape=(1, 16, 16, 3))
    f["wobble"] = _onnx(
        d / "wobble.onnx",
        tail=[
            helper.make_node("Wobble", ["r"], ["w"], domain="org.example"),
            helper.make_node("GlobalAveragePool", ["w"], ["g"]),
            helper.make_node("Flatten", ["g"], ["y"]),
        ],
        extra_opsets=["org.example"],
    )
    f["uint8"] = _onnx(
        d / "uint8.onnx",
        elem=TensorProto.UINT8,
        head=[helper.make_node("Identity", ["x"], ["xi"])],
        first="xi",
    )
    f["two_inputs"] = _onnx(d / "two.onnx", inputs=2)
    f["opset7"] = _onnx(d / "old.onnx", opset=7)
    f["int64_input"] = _onnx(d / "int64.onnx", elem=TensorProto.INT64)
    outside = d / "outside"
    outside.mkdir()
    proto = onnx.load(str(_onnx(outside / "m.onnx")))
    weight = proto.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../photo.png")
    (outside / "m.onnx").write_bytes(proto.SerializeToString())
    f["external"] = outside / "m.onnx"
    (d / "random.pt").write_bytes(os.urandom(256))
    f["random_pt"] = d / "random.pt"
    (d / "nested.json").write_text("[" * 50_000 + "]" * 50_000)
    f["nested"] = d / "nested.json"
    (d / "notjson.json").write_text("{plan: yes")
    f["notjson"] = d / "notjson.json"
    f["foreign_plan"] = d / "foreign.json"
    made = CliRunner().invoke(
        main,
        [
            "plan",
            "demo",
            "--patch",
            "32",
            "--stride",
            "32",
            "-o",
            str(f["foreign_plan"]),
            "--db",
            str(d / "plans.db"),
        ],
    )
    assert made.exit_code == 0, made.output
    body = json.loads(f["foreign_plan"].read_text())
    body["model"]["fingerprint"] = "0" * 64
    f["foreign_plan"].write_text(json.dumps(body))
    body["blocks"].pop()
    (d / "holes.json").write_text(json.dumps(body))
    f["holes"] = d / "holes.json"
    (d / "notes.db").write_bytes(b"these are my notes\n" * 100)
    f["notes_db"] = d / "notes.db"
    with sqlite3.connect(d / "other.db") as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    f["foreign_db"] = d / "other.db"
    from test_model_files import _pickled_weight, _rewrite, _saved

    crafted_dir = d / "crafted"
    crafted_dir.mkdir()
    f["crafted"] = _rewrite(_saved(crafted_dir), _pickled_weight(d / "marker"))
    return f


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (FIFOs and folders by kind) and a digest of its bytes."""
    seen = {}
    for path in sorted(folder.rglob("*")):
        if path.is_fifo() or path.is_dir():
            seen[str(path)] = "fifo" if path.is_fifo() else "dir"
        else:
            seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


OUT = "out"  # --out folder the runs must never create

CLI: dict[str, tuple[Callable[[dict[str, Path]], list[str]], str]] = {
    "patch value nan": (lambda f: ["explain", "demo", "--patch-value", "nan"], "--patch-value.*finite"),
    "patch value inf": (lambda f: ["explain", "demo", "--patch-value", "inf"], "--patch-value.*finite"),
    "patch value -inf": (lambda f: ["explain", "demo", "--patch-value", "-inf"], "--patch-value.*finite"),
    "image size 0 0": (
        lambda f: ["explain", "demo", "--image-size", "0", "0"],
        "--image-size.*0 is not in the range",
    ),
    "image size negative": (lambda f: ["explain", "demo", "--image-size", "-5", "10"], "--image-size"),
    "max memory nan": (lambda f: ["explain", "demo", "--max-memory", "nan"], "--max-memory.*finite"),
    "max memory inf": (lambda f: ["explain", "demo", "--max-memory", "inf"], "--max-memory.*finite"),
    "max memory 0": (lambda f: ["explain", "demo", "--max-memory", "0"], "--max-memory.*positive"),
    "max memory negative": (lambda f: ["explain", "demo", "--max-memory", "-1"], "--max-memory.*positive"),
    "device tpu": (
        lambda f: ["explain", "demo", "--device", "tpu"],
        "device must be 'cpu' or 'cuda'|not 'tpu'",
    ),
    "device meta": (lambda f: ["explain", "demo", "--device", "meta"], "not 'meta'"),
    "device cuda without a GPU": (lambda f: ["explain", "demo", "--device", "cuda"], "no CUDA GPU"),
    "device garbage": (lambda f: ["explain", "demo", "--device", "cuda:x"], "device must be"),
    "out is a file": (lambda f: ["explain", "demo", "--out", str(f["existing"])], "is a file"),
    "patch 0": (lambda f: ["explain", "demo", "--patch", "0"], "at least 1 pixel"),
    "stride 0": (lambda f: ["explain", "demo", "--stride", "0x4"], "at least 1 pixel"),
    "patch three numbers": (lambda f: ["explain", "demo", "--patch", "3x3x3"], "expected N or HxW"),
    "patch words": (lambda f: ["explain", "demo", "--patch", "abc"], "expected N or HxW"),
    "patch larger than image": (lambda f: ["explain", "demo", "--patch", "999"], "larger than the image"),
    "target too large": (lambda f: ["explain", "demo", "--target", "10"], "outside the model's 4 outputs"),
    "target negative": (lambda f: ["explain", "demo", "--target", "-1"], "outside the model's 4 outputs"),
    "unknown mode": (lambda f: ["explain", "demo", "--mode", "fast"], "'fast' is not one of"),
    "batch size 0": (lambda f: ["explain", "demo", "--batch-size", "0"], "--batch-size"),
    "threshold 0": (lambda f: ["explain", "demo", "--approx-threshold", "0"], "threshold must be in"),
    "threshold 1.5": (lambda f: ["explain", "demo", "--approx-threshold", "1.5"], "threshold must be in"),
    "threshold nan": (lambda f: ["explain", "demo", "--approx-threshold", "nan"], "threshold must be in"),
    "drill-down 0": (lambda f: ["explain", "demo", "--drill-down", "0"], "drill-down"),
    "drill-down nan": (lambda f: ["explain", "demo", "--drill-down", "nan"], "drill-down"),
    "coarse stride 0": (
        lambda f: ["explain", "demo", "--drill-down", "0.5", "--coarse-stride", "0"],
        "at least 1 pixel",
    ),
    "image folder holds no images": (lambda f: ["explain", "demo", str(f["folder"])], "no images to explain: .* holds no image files"),
    "image is a FIFO": (lambda f: ["explain", "demo", str(f["fifo"])], "not a regular file"),
    "image is text": (lambda f: ["explain", "demo", str(f["text_image"])], "not an image Pillow can read"),
    "image missing": (lambda f: ["explain", "demo", str(f["dir"] / "nowhere.png")], "does not exist"),
    "image truncated": (lambda f: ["explain", "demo", str(f["truncated"])], "cannot be decoded|not an image"),
    "float image out of range": (lambda f: ["explain", "demo", str(f["hdr"])], "float pixels in"),
    "decompression bomb": (lambda f: ["explain", "demo", str(f["bomb"])], "196 megapixels"),
    "no torchvision model": (
        lambda f: ["explain", "torchvision:nosuchnet", str(f["photo"])],
        "no classification model 'nosuchnet'",
    ),
    "model file missing": (
        lambda f: ["explain", str(f["dir"] / "missing.pt2"), str(f["photo"])],
        "does not exist",
    ),
    "pickled weight in a pt2": (
        lambda f: ["explain", str(f["crafted"]), str(f["photo"])],
        "stored as a pickle",
    ),
    "onnx that is text": (lambda f: ["explain", str(f["text_onnx"]), str(f["photo"])], "not an ONNX model"),
    "onnx truncated": (
        lambda f: ["explain", str(f["cut_onnx"]), str(f["photo"])],
        "not an ONNX model|fails the ONNX checker",
    ),
    "onnx NHWC": (lambda f: ["explain", str(f["nhwc"]), str(f["photo"])], "channels last"),
    "onnx custom operator": (lambda f: ["explain", str(f["wobble"]), str(f["photo"])], "org.example.Wobble"),
    "onnx uint8 without cast": (lambda f: ["explain", str(f["uint8"]), str(f["photo"])], "uint8 input"),
    "onnx int64 input": (lambda f: ["explain", str(f["int64_input"]), str(f["photo"])], "input 'x' is int64"),
    "onnx two inputs": (
        lambda f: ["explain", str(f["two_inputs"]), str(f["photo"])],
        "must take one image input",
    ),
    "onnx opset 7": (lambda f: ["explain", str(f["opset7"]), str(f["photo"])], "opset 7"),
    "onnx external data outside": (
        lambda f: ["explain", str(f["external"]), str(f["photo"])],
        "outside the model's folder",
    ),
    "random bytes as a model": (
        lambda f: ["explain", str(f["random_pt"]), str(f["photo"])],
        "never unpickles",
    ),
    "weights for demo": (lambda f: ["explain", "demo", "--weights", str(f["photo"])], "own weights"),
    "weights missing": (
        lambda f: ["explain", "torchvision:resnet18", str(f["photo"]), "--weights", str(f["dir"] / "w.pt")],
        "does not exist",
    ),
    "weights not a state dict": (
        lambda f: ["explain", "torchvision:resnet18", str(f["photo"]), "--weights", str(f["random_pt"])],
        "cannot read weights",
    ),
    "plan deeply nested": (lambda f: ["explain", "demo", "--plan", str(f["nested"])], "nested too deeply"),
    "plan not json": (lambda f: ["explain", "demo", "--plan", str(f["notjson"])], "not JSON"),
    "plan of another model": (
        lambda f: ["explain", "demo", "--patch", "32", "--stride", "32", "--plan", str(f["foreign_plan"])],
        "another model",
    ),
    "plan with holes": (lambda f: ["explain", "demo", "--plan", str(f["holes"])], "cover every position"),
    "plan with a mode": (
        lambda f: [
            "explain",
            "demo",
            "--patch",
            "32",
            "--stride",
            "32",
            "--plan",
            str(f["foreign_plan"]),
            "--mode",
            "full",
        ],
        "leave out --mode",
    ),
    "image missing for a model": (lambda f: ["explain", "torchvision:resnet18"], "IMAGES are required"),
    "database is notes": (lambda f: ["explain", "demo", "--db", str(f["notes_db"])], "not a SQLite database"),
    "database is someone else's": (
        lambda f: ["explain", "demo", "--db", str(f["foreign_db"])],
        "not hyinf's",
    ),
    "database is a folder": (lambda f: ["explain", "demo", "--db", str(f["folder"])], "is a directory"),
    "plan file is a FIFO": (
        lambda f: ["explain", "demo", "--plan", str(f["fifo_plan"])],
        "not a regular file",
    ),
    "model file is a FIFO": (
        lambda f: ["explain", str(f["fifo_model"]), str(f["photo"])],
        "not a regular file",
    ),
    "model file is a folder": (
        lambda f: ["explain", str(f["folder_model"]), str(f["photo"])],
        "is a directory",
    ),
    "weights file is a FIFO": (
        lambda f: ["explain", "torchvision:resnet18", str(f["photo"]), "--weights", str(f["fifo_model"])],
        "not a regular file",
    ),
    "an output name is a folder": (
        lambda f: ["explain", "demo", "--out", str(f["taken"])],
        "heatmap.npy is a directory",
    ),
    "out under a file": (lambda f: ["explain", "demo", "--out", str(f["existing"] / "sub")], "is a file"),
    "import a FIFO": (lambda f: ["plans", "import", str(f["fifo_plan"])], "not a regular file"),
    "plan output on a full disk": (
        lambda f: ["plan", "demo", "--patch", "64", "--stride", "64", "-o", "/dev/full"],
        "No space left",
    ),
    "plan output in a missing folder": (
        lambda f: ["plan", "demo", "-o", str(f["dir"] / "no" / "such" / "plan.json")],
        "does not exist",
    ),
    "plan output is a folder": (lambda f: ["plan", "demo", "-o", str(f["folder"])], "is a directory"),
    "plan image size 0": (lambda f: ["plan", "demo", "--image-size", "0", "0"], "--image-size"),
    "plan patch 0": (lambda f: ["plan", "demo", "--patch", "0"], "at least 1 pixel"),
    "plan device meta": (lambda f: ["plan", "demo", "--device", "meta"], "not 'meta'"),
    "plan a crafted archive": (lambda f: ["plan", str(f["crafted"])], "stored as a pickle"),
    "import a nested plan": (lambda f: ["plans", "import", str(f["nested"])], "nested too deeply"),
    "import a plan with holes": (lambda f: ["plans", "import", str(f["holes"])], "cover every position"),
    "import not json": (lambda f: ["plans", "import", str(f["notjson"])], "not JSON"),
    "show a missing plan": (lambda f: ["plans", "show", "42"], "no plan 42"),
    "delete a missing plan": (lambda f: ["plans", "delete", "42"], "no plan 42"),
    "export into a missing folder": (
        lambda f: ["plans", "export", "1", "-o", str(f["dir"] / "none" / "p.json")],
        "does not exist",
    ),
    "plan id not a number": (lambda f: ["plans", "show", "first"], "'first' is not a valid integer"),
    "db info on notes": (lambda f: ["db", "info", "--db", str(f["notes_db"])], "not a SQLite database"),
    "unknown command": (lambda f: ["explian", "demo"], "No such command 'explian'"),
    "unknown option": (lambda f: ["explain", "demo", "--patchsize", "8"], "No such option"),
    "unknown backend": (lambda f: ["explain", "demo", "--backend", "fastest"], "'fastest' is not one of 'torch', 'ort', 'auto'"),
    "auto with one backend's cost model": (lambda f: ["plan", "demo", "--backend", "auto", "--profile", "1"], "leave out one"),
    "ort profile with model layers": (lambda f: ["profile", "--backend", "ort", "--model", "demo"], "torch backend only"),
    "stop a daemon that is not there": (lambda f: ["daemon", "stop"], "no hyinf daemon answers"),
    "tf32 on a CPU": (lambda f: ["explain", "demo", "--precision", "tf32"], "tf32 is a CUDA GPU's"),
    "precision words": (lambda f: ["explain", "demo", "--precision", "half"], "'half' is not one of 'float32', 'tf32'"),
    "CUDA graphs on a CPU": (lambda f: ["explain", "demo", "--cuda-graphs"], "need device cuda"),
    "calibrate on one image": (
        lambda f: ["plan", "demo", "--target-ssim", "0.9", "--calibration-images", str(f["photo"])],
        "at least 2 images",
    ),
}


@pytest.mark.parametrize("case", list(CLI))
def test_cli_gallery(files: dict[str, Path], case: str, tmp_path: Path) -> None:
    make, words = CLI[case]
    args = make(files)
    if args[0] == "explain" and "--out" not in args:
        args += ["--out", str(files["dir"] / OUT)]
    if args[0] in ("plan", "plans") and "--db" not in args:
        args += ["--db", str(tmp_path / "fresh.db")]
    before = _snapshot(files["dir"])
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0, (
        result.exception,
        result.output,
    )
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    assert re.search(words, lines[0]), lines[0]
    assert _snapshot(files["dir"]) == before, "a file was written or changed"
    assert not (files["dir"] / "marker").exists(), "code from a model file ran"


class _Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean((2, 3)), x.amax((2, 3))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


IMAGE = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))

API: dict[str, tuple[Callable[[dict[str, Path]], object], str]] = {
    "patch value nan": (lambda f: hyinf.explain(_tiny(), IMAGE, patch_value=float("nan")), "finite"),
    "patch value per-channel inf": (
        lambda f: hyinf.explain(_tiny(), IMAGE, patch_value=torch.tensor([0, float("inf"), 0])),
        "finite",
    ),
    "max memory nan": (lambda f: hyinf.explain(_tiny(), IMAGE, max_memory=float("nan")), "max_memory"),
    "max memory inf": (lambda f: hyinf.explain(_tiny(), IMAGE, max_memory=float("inf")), "max_memory"),
    "batch size bool": (lambda f: hyinf.explain(_tiny(), IMAGE, batch_size=True), "batch_size"),
    "device tpu": (lambda f: hyinf.explain(_tiny(), IMAGE, device="tpu"), "device must be|not 'tpu'"),
    "device meta": (lambda f: hyinf.explain(_tiny(), IMAGE, device="meta"), "not 'meta'"),
    "target numpy out of range": (
        lambda f: hyinf.explain(_tiny(), IMAGE, target=np.int64(7)),
        "outside the model's 3 outputs",
    ),
    "target float": (lambda f: hyinf.explain(_tiny(), IMAGE, target=1.5), "outside the model's 3 outputs"),
    "target bool": (lambda f: hyinf.explain(_tiny(), IMAGE, target=True), "outside the model's 3 outputs"),
    "image with NaN": (
        lambda f: hyinf.explain(_tiny(), torch.full((3, 16, 16), float("nan"))),
        "NaN or infinite",
    ),
    "complex image": (
        lambda f: hyinf.explain(_tiny(), torch.zeros(3, 16, 16, dtype=torch.complex64)),
        "real numbers",
    ),
    "tuple output in naive mode": (lambda f: hyinf.explain(_Pair(), IMAGE, mode="naive"), "returns tuple"),
    "not a model": (lambda f: hyinf.explain(lambda x: x, IMAGE), "model must be"),
    "missing onnx file": (lambda f: hyinf.explain(str(f["dir"] / "gone.onnx"), IMAGE), "does not exist"),
    "onnx custom operator": (lambda f: hyinf.explain(str(f["wobble"]), IMAGE), "org.example.Wobble"),
    "image of two dimensions": (
        lambda f: hyinf.explain(_tiny(), torch.rand(16, 16)),
        "image must have shape",
    ),
    "occlusion window too large": (
        lambda f: hyinf.Occlusion(_tiny()).attribute(IMAGE[None], sliding_window_shapes=(3, 40, 40)),
        "window|larger",
    ),
}


@pytest.mark.parametrize("case", list(API))
def test_api_gallery(files: dict[str, Path], case: str) -> None:
    call, words = API[case]
    before = _snapshot(files["dir"])
    with pytest.raises(HyinfError, match=words) as caught:
        call(files)
    assert "\n" not in str(caught.value)
    assert _snapshot(files["dir"]) == before


def test_the_gallery_is_large() -> None:
    assert len(CLI) + len(API) >= 60
