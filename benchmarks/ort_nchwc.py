"""One incremental convolution on ONNX Runtime's CPU provider, lowered two ways, interleaved.

    python benchmarks/ort_nchwc.py --write docs/benchmarks.md

* today: window rows gathered from pixel-major rows, transposed to NCHW, `Conv` + `Relu`, transposed
  back to rows; ORT's NCHWc layout pass reorders every window into its blocked layout and back;
* NCHWc-native: the rows read as a table of B-channel slices (B: ORT's block size on this CPU), one
  `Gather` of slices straight into the blocked layout, `com.microsoft.nchwc.Conv` with the weights
  reordered as ORT reorders them (OIHWBiBo) and ReLU fused; its output is itself a slice table.

Both graphs are run on the same windows (resnet18-like layer shapes, 192 positions, random
windows) and must agree to float tolerance. This measures what a lowering that keeps windows in
ORT's blocked layout could save; the backend does not lower that way (see docs/ort.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from engine_speed import machine, report
from onnx import TensorProto, helper, numpy_helper

# (input channels = output channels, map side, read window side) of resnet18-like 3x3 layers
SHAPES = ((64, 58, 12), (64, 58, 20), (128, 30, 9), (128, 30, 13), (256, 16, 7), (256, 16, 11), (512, 9, 5))
POSITIONS = 192
KERNEL = 3


def _session(graph: onnx.GraphProto, threads: int, path: str | None = None) -> ort.InferenceSession:
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft.nchwc", 1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if path is not None:
        options.optimized_model_filepath = path
        options.log_severity_level = 3  # ORT warns that the saved graph holds CPU-specific layouts: that is what is read
    return ort.InferenceSession(helper.make_model(graph, opset_imports=opsets).SerializeToString(), options, providers=["CPUExecutionProvider"])


def reordered(weight: np.ndarray, block: int) -> np.ndarray:
    """Conv weights (O, C, kh, kw) in ORT's NCHWc filter layout, OIHWBiBo, under their own shape."""
    o, c, kh, kw = weight.shape
    return weight.reshape(o // block, block, c // block, block, kh, kw).transpose(0, 2, 4, 5, 3, 1).reshape(o, c, kh, kw)


def block_size() -> int:
    """ORT's NCHWc block size on this CPU (8 with AVX2, 16 with AVX-512), read off the filter its
    layout pass writes for a probe convolution."""
    weight = np.random.default_rng(1).standard_normal((64, 64, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")])
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "optimized.onnx")
        _session(graph, 1, path)
        written = [numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer if len(t.dims) == 4]
    for block in (16, 8, 4):
        if written and np.array_equal(reordered(weight, block), written[0]):
            return block
    raise SystemExit("ORT's layout pass wrote no NCHWc filter this script recognises on this CPU")


def measure(channels: int, side: int, read: int, block: int, rounds: int, threads: int) -> tuple[float, float, float]:
    """Median milliseconds per run of today's lowering and the NCHWc-native one, and their largest difference."""
    rng = np.random.default_rng(0)
    n, out = POSITIONS, read - KERNEL + 1
    weight = (rng.standard_normal((channels, channels, KERNEL, KERNEL)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    rows = rng.standard_normal((side * side, channels)).astype(np.float32)
    top, left = rng.integers(0, side - read + 1, n), rng.integers(0, side - read + 1, n)
    pixels = ((top[:, None, None] + np.arange(read)[:, None]) * side + left[:, None, None] + np.arange(read)).astype(np.int64)
    value = lambda name, kind, shape: helper.make_tensor_value_info(name, kind, shape)  # noqa: E731
    today = helper.make_graph([
        helper.make_node("Gather", ["rows", "index"], ["windows"], axis=0),
        helper.make_node("Transpose", ["windows"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w", "b"], ["y"]),
        helper.make_node("Relu", ["y"], ["z"]),
        helper.make_node("Transpose", ["z"], ["out"], perm=[0, 2, 3, 1]),
    ], "today", [value("rows", TensorProto.FLOAT, rows.shape), value("index", TensorProto.INT64, pixels.shape)],
        [value("out", TensorProto.FLOAT, None)], [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    groups = channels // block
    table, slices = rows.reshape(-1, block), pixels[:, None] * groups + np.arange(groups)[None, :, None, None]
    native = helper.make_graph([
        helper.make_node("Gather", ["table", "index"], ["windows"], axis=0),  # (n, C/B, h, w, B): NCHWc memory
        helper.make_node("Reshape", ["windows", "shape"], ["x"]),
        helper.make_node("Conv", ["x", "w", "b"], ["out"], domain="com.microsoft.nchwc", activation="Relu"),
    ], "native", [value("table", TensorProto.FLOAT, table.shape), value("index", TensorProto.INT64, slices.shape)],
        [value("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(reordered(weight, block), "w"), numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(np.array([n, channels, read, read], np.int64), "shape")])
    systems = {"today": (_session(today, threads), {"rows": rows, "index": pixels}),
               "native": (_session(native, threads), {"table": table, "index": slices})}
    expected = systems["today"][0].run(None, systems["today"][1])[0]
    got = systems["native"][0].run(None, systems["native"][1])[0].reshape(n, groups, out, out, block).transpose(0, 2, 3, 1, 4).reshape(n, out, out, channels)
    difference = float(np.abs(expected - got).max())
    if difference > 1e-4 * float(np.abs(expected).max()):
        raise SystemExit(f"the NCHWc-native lowering differs from today's by {difference:.3g}")
    times: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, (session, feed) in systems.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["today"]) * 1e3, statistics.median(times["native"]) * 1e3, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path, help="replace the ort-nchwc section of this markdown file")
    args = parser.parse_args()
    block = block_size()
    lines = [
        f"Machine: {machine()}, onnxruntime {ort.__version__}, {args.threads} ORT threads, NCHWc block size {block}. "
        f"One 3x3 convolution + ReLU of {POSITIONS} windows read from rows, milliseconds per run (median of {args.rounds} interleaved rounds).",
        "",
        "| channels | map | read window | today (reorders) | NCHWc-native | today / native | max difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for channels, side, read in SHAPES:
        today, native, difference = measure(channels, side, read, block, args.rounds, args.threads)
        lines.append(f"| {channels} | {side}x{side} | {read}x{read} | {today:.1f} | {native:.1f} | {today / native:.2f}x | {difference:.1e} |")
    report("\n".join(lines) + "\n", args.write, "ort-nchwc")


if __name__ == "__main__":
    main()
