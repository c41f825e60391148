"""The ONNX Runtime backend: a plan's evaluation of every occlusion position, run by ONNX Runtime.

The torch engine's evaluation of one chunk of positions (gathers of windows from the clean image's
activations, the operators on those windows, pastes into whole maps where a full node needs them) is
a fixed sequence of tensor operations once the plan, the grid and the chunk size are fixed. It is
traced once into an ONNX graph, so the same code defines both backends and ORT runs the whole chunk
as one graph: no Python per node or per position.

One graph serves every block of positions (blocks have different window sizes, so their subgraphs
differ): each run evaluates a slice of every block at once, so the weights are stored and
pre-packed once. The clean image's activations are computed once per image by the torch program
and handed to the graph as inputs without copies. Where the model ends in a classifier tail (see
`hyinf.runtime.tail.Tail`), the graph stops at the tail's cut and a second, small graph runs the
tail on the cut values of many runs at once, so large linear layers see large batches.
"""

from __future__ import annotations

import importlib.metadata
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from hyinf import __version__ as hyinf_version
from hyinf.errors import ModelError, SettingsError
from hyinf.graph.fingerprint import graph_fingerprint
from hyinf.graph.ir import Node, Op
from hyinf.runtime.disk_cache import DiskCache, content_key
from hyinf.runtime.engine import BlockedEngine, CleanImage, ImageRun
from hyinf.runtime.onnx_export import OPSET, add_weights, export_onnx, read_weights, weight_fingerprint
from hyinf.runtime.tail import Cells, Tail, batches

if TYPE_CHECKING:
    import onnx

CHECK_TOLERANCE = 1e-4  # of the output scale: the first chunk of a new session against the torch backend
CHECK_POSITIONS = 4  # of each block: the torch engine's evaluation of them costs what the ORT run saves
KEPT_INDEX_BYTES = 256 << 20  # a session keeps its runs' index values (see `_Session.values`) up to this size
_ORT_TYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64, torch.float16: np.float16,
              torch.int32: np.int32, torch.bool: np.bool_}
Key = tuple[Any, ...]  # ("image",), ("base", node) or ("rows", node, pad, value): a clean value the graph reads


def providers(device: torch.device) -> list[str]:
    """ONNX Runtime's execution providers for a torch device."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SettingsError("backend 'ort' on cuda needs onnxruntime-gpu (pip install onnxruntime-gpu); use backend='torch' or device='cpu'")
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]  # type: ignore[list-item]
    raise SettingsError(f"backend 'ort' runs on cpu or cuda, not {device.type}")


# A run evaluates a slice of every block, up to this many chunks' worth of positions in all (a chunk
# per block where there are fewer blocks). ORT frees a block's intermediate values before the next
# block runs, so a run peaks far below the sum of its positions' estimates. With 9 blocks (resnet18 and
# vgg16 at 224x224, patch 16, stride 8, hybrid plans, chunks of 64), runs of 192 positions peaked 216
# and 460 MiB above resting, under one chunk's estimate (423 and 570 MiB), and ran 1.12x and 1.02x as
# fast as runs of 64 (interleaved rounds); runs of 576, a chunk per block, 1.10x and 0.99x.
RUN_CHUNKS = 3


def run_sizes(block_sizes: list[int], chunk: int) -> tuple[int, list[int]]:
    """How many runs, and how many positions of each block every run evaluates.

    Every run evaluates a slice of every block, at most `chunk` positions times the number of blocks
    (at most RUN_CHUNKS) in all, and at least one per block. Blocks the runs do not divide are padded.
    Of the run counts from the fewest the budget allows to twice as many, the fewest whose padding is
    within 2% of the least is chosen.
    """
    budget = max(chunk, 1) * min(len(block_sizes), RUN_CHUNKS)
    fewest = max(1, math.ceil(sum(block_sizes) / budget))
    options: list[tuple[int, int, list[int]]] = []  # (positions computed, runs, sizes)
    for runs in range(fewest, max(fewest, *block_sizes) + 1):
        if options and runs > 2 * fewest:
            break
        sizes = [math.ceil(p / runs) for p in block_sizes]
        if sum(sizes) <= max(budget, len(block_sizes)):
            needed = max(math.ceil(p / s) for p, s in zip(block_sizes, sizes))  # runs that still hold positions
            options.append((needed * sum(sizes), needed, sizes))
    least = min(computed for computed, _, _ in options)
    _, runs, sizes = min((o for o in options if o[0] <= 1.02 * least), key=lambda o: o[1])
    return runs, sizes


class Recorder:
    """A clean image that notes which of its values a chunk reads: they become the graph's inputs."""

    def __init__(self, clean: CleanImage) -> None:
        self.clean, self.keys, self.memory = clean, list[Key](), clean.memory
        recorder = self

        class Base(dict[str, torch.Tensor]):
            def __getitem__(self, name: str) -> torch.Tensor:
                recorder._note(("base", name))
                return clean.base[name]

        self.base = Base(clean.base)

    def _note(self, key: Key) -> None:
        if key not in self.keys:
            self.keys.append(key)

    @property
    def image(self) -> torch.Tensor:
        self._note(("image",))
        return self.clean.image

    def rows(self, name: str, pad: tuple[int, int, int, int] = (0, 0, 0, 0), value: float = 0.0) -> torch.Tensor:
        self._note(("rows", name, pad, value))
        return self.clean.rows(name, pad, value)



def _seconds(stored: Any) -> float:
    """A duration the cache's JSON holds (0 where an older entry has none or it is not a number)."""
    return float(stored) if isinstance(stored, (int, float)) and math.isfinite(stored) and stored >= 0 else 0.0


def _weights_meta(used: dict[str, list[int]], weights: dict[str, list[torch.Tensor]]) -> dict[str, list[list[Any]]]:
    """What a cache entry records of the weights each graph holds as external data: index and fingerprint."""
    return {part: [[k, weight_fingerprint(weights[part][k])] for k in ks] for part, ks in used.items()}


def _stored_weights(meta: dict[str, Any], weights: dict[str, list[torch.Tensor]]) -> dict[str, list[int]] | None:
    """The weights each cached graph holds as external data, where the entry's metadata names this
    model's (by index and fingerprint); None where it names others (an older or damaged entry): rebuilt."""
    stored = meta.get("weights")
    if not isinstance(stored, dict) or set(stored) != set(weights):
        return None
    used: dict[str, list[int]] = {}
    for part, entries in stored.items():
        if not isinstance(entries, list):
            return None
        used[part] = []
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int) and 0 <= entry[0] < len(weights[part])
                    and entry[1] == weight_fingerprint(weights[part][entry[0]])):
                return None
            used[part].append(entry[0])
    return used


def clean_value(clean: CleanImage, key: Key) -> torch.Tensor:
    """The clean value a graph input stands for."""
    if key[0] == "image":
        return clean.image
    return clean.base[key[1]] if key[0] == "base" else clean.rows(*key[1:])


class Given:
    """A clean image whose values are the exported graph's inputs."""

    memory: set[int] = set()

    def __init__(self, values: dict[Key, torch.Tensor]) -> None:
        self.values = values
        self.base = {key[1]: v for key, v in values.items() if key[0] == "base"}

    @property
    def image(self) -> torch.Tensor:
        return self.values[("image",)]

    def rows(self, name: str, pad: tuple[int, int, int, int] = (0, 0, 0, 0), value: float = 0.0) -> torch.Tensor:
        return self.values[("rows", name, pad, value)]


# A paste merges into one gather where the source has at most this many times the windows' rows. In
# ORT (2 threads), Concat + Gather against Gather + ScatterND at vgg16's and resnet18's shapes: 0.4-0.8x
# the time at sources 0.6-4 times the windows, 1.7-5x at 10-30 times (vgg16's 226x226 first maps).
MERGE_SOURCE_RATIO = 4


class TracedRun(ImageRun):
    """An engine run as it is exported: never in place (values are graph tensors, not buffers)."""

    def _kernel(self, node: Node, args: list[torch.Tensor]) -> torch.Tensor:
        if node.op in (Op.MAX_POOL, Op.AVG_POOL):
            return self._padded_pool(node, args[0])
        return self.e.program.full[node.name](*args)

    def _padded_pool(self, node: Node, maps: torch.Tensor) -> torch.Tensor:
        """A pooling of whole maps as its windows are pooled: without ceil_mode, with extra rows of
        padding where ceil_mode reads past the border. Where torch's ceil_mode drops a last window that
        would start in the padding, ONNX's shape inference keeps it, and ORT's memory planner then
        reuses buffers of the wrong size."""
        kernel, w = self.e.program.local[node.name], node.window
        assert w is not None
        if w.pad_before == w.pad_after:  # the op's own padding (an explicit Pad would copy every map)
            if node.op is Op.MAX_POOL:
                out = F.max_pool2d(maps, w.kernel, w.stride, w.pad_before, w.dilation)
            else:  # means over the whole kernel, padding included, as the window kernel computes them
                out = F.avg_pool2d(maps, w.kernel, w.stride, w.pad_before, count_include_pad=True)
        else:
            out = kernel.fn(F.pad(maps, (w.pad_before[1], w.pad_after[1], w.pad_before[0], w.pad_after[0]), value=kernel.pad_value))
        return out if kernel.divisor is None else out / kernel.divisor


class _Chunk(nn.Module):
    """(fill, positions of each block, clean values) -> the model's outputs (or the tail's cut values)
    for those positions."""

    def __init__(self, blocked: BlockedEngine, keys: list[Key]) -> None:
        super().__init__()
        self.blocked, self.keys = blocked, keys

    def forward(self, fill: torch.Tensor, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        count = len(self.blocked.engines)
        clean = Given(dict(zip(self.keys, args[count:])))
        outs = []
        for engine, idx in zip(self.blocked.engines, args[:count]):
            outs.append(_evaluate(TracedRun(engine, clean, fill), idx, self.blocked))  # type: ignore[arg-type]
        return tuple(outs)


class _TailModule(nn.Module):
    """(cut values) -> the model's outputs: the tail every block shares, exported once."""

    def __init__(self, run: ImageRun, tail: Tail) -> None:
        super().__init__()
        self.run, self.tail = run, tail

    def forward(self, cut: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(cut.shape[0], dtype=torch.long, device=cut.device)
        return self.run.tail(zeros, zeros, self.tail, cut)


def _evaluate(run: ImageRun, idx: torch.Tensor, blocked: BlockedEngine) -> torch.Tensor:
    """What one run computes for a block: the model's outputs, the cut values when a tail follows, or
    the changed cells' values when the tail starts with a windowed layer (which runs in torch: its
    per-cell products have counts that differ from run to run, which one ONNX graph cannot express)."""
    zeros = torch.zeros_like(idx)
    if blocked.tail is None:
        return run.chunk(zeros, idx)
    if blocked.windowed is not None:
        return run.changed_delta(zeros, idx, blocked.tail, blocked.windowed.source)
    return run.head(zeros, idx, blocked.tail)


def probe_chunk(blocked: BlockedEngine, clean: CleanImage, fill: torch.Tensor) -> tuple[list[Key], list[torch.Tensor]]:
    """The clean values a chunk graph reads (its inputs) and the weights, from one position of every
    block: what a block reads depends on its plan, not on how many positions it evaluates."""
    recorder = Recorder(clean)
    one = torch.zeros(1, dtype=torch.long, device=blocked.program.device)

    def probe() -> None:
        for engine in blocked.engines:
            _evaluate(TracedRun(engine, recorder, fill), one, blocked)  # type: ignore[arg-type]

    read = read_weights(probe)
    given = {id(fill), *map(id, clean.tensors())}  # inputs of the graph, or what they were made from
    return recorder.keys, [w for w in read if id(w) not in given]


def lower(blocked: BlockedEngine, clean: CleanImage, fill: torch.Tensor, sizes: list[int], keys: list[Key],
          weights: list[torch.Tensor]) -> tuple[bytes, list[int]]:
    """The ONNX graph evaluating `sizes[b]` positions of every block b, reading the clean values `keys`
    (see `probe_chunk`), and the indices of the `weights` it holds as external data."""
    probes = [torch.zeros(size, dtype=torch.long, device=blocked.program.device) for size in sizes]
    values = [clean_value(clean, key).clone() for key in keys]  # distinct tensors: the tracer merges repeated ones into one input
    names = ["fill", *(f"block{b}" for b in range(len(sizes))), *(f"clean{k}" for k in range(len(values)))]
    module, args, outputs = _Chunk(blocked, keys), (fill, *probes, *values), [f"out{b}" for b in range(len(sizes))]
    return export_onnx(module, args, names, outputs, weights=weights)


def _tail_module(blocked: BlockedEngine, clean: CleanImage, fill: torch.Tensor) -> tuple[_TailModule, torch.Tensor]:
    """The module of the blocked engine's tail (after its windowed first layer, where it has one) and an input for it."""
    tail = blocked.dense_tail()
    cut = blocked.program.graph[tail.cut]
    probe = torch.zeros(2, *cut.shape[1:], device=blocked.program.device)  # 2, not 1: a batch axis the exporter cannot mistake for a constant
    return _TailModule(TracedRun(blocked.engines[0], clean, fill), tail), probe


def tail_weights(blocked: BlockedEngine, clean: CleanImage, fill: torch.Tensor) -> list[torch.Tensor]:
    """The weights the tail's graph reads."""
    module, probe = _tail_module(blocked, clean, fill)
    read = read_weights(lambda: module(probe))
    given = {id(fill), *map(id, clean.tensors())}
    return [w for w in read if id(w) not in given]


def lower_tail(blocked: BlockedEngine, clean: CleanImage, fill: torch.Tensor, weights: list[torch.Tensor]) -> tuple[bytes, list[int]]:
    """The ONNX graph of the blocked engine's tail for any number of positions, and the indices of the
    `weights` (see `tail_weights`) it holds as external data."""
    module, probe = _tail_module(blocked, clean, fill)
    return export_onnx(module, (probe,), ["cut"], ["out"], {"cut": {0: "positions"}, "out": {0: "positions"}}, weights)


@dataclass
class _Session:
    session: ort.InferenceSession
    keys: list[Key]
    sizes: list[int]  # positions of each block per run
    inputs: set[str]  # the graph inputs the exporter kept (unused ones are dropped)
    tail: ort.InferenceSession | None  # the shared tail, run on the cut values of many runs at once
    positions: ort.InferenceSession | None  # a run's positions -> the index values `session` reads
    kept: dict[int, dict[str, torch.Tensor]]  # each run's index values over the whole grid, reused for every image
    checked: bool = False  # against the torch engine, on the first run
    cached: bool = False  # read from the disk cache: checked in full when it was built
    pending: tuple[str, dict[str, bytes], dict[str, Any]] | None = None  # (cache key, graphs, metadata): stored once checked
    build_s: float = 0.0  # seconds its graphs took to build (in an earlier process, where read from the disk cache)
    weight_bytes: int = 0  # of the weights its graphs read

    def values(self, run: int, blocks: list[torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
        """The graph inputs for one run's positions (`blocks`): the positions themselves, or the index
        values computed from them, computed once per run of the whole grid (`keep`) while they fit."""
        given = {f"block{b}": idx for b, idx in enumerate(blocks)}
        if self.positions is None:
            return given
        if run in self.kept and keep:
            return self.kept[run]
        feed = {i.name: given[i.name].cpu().numpy() for i in self.positions.get_inputs()}
        device = blocks[0].device
        values = {o.name: torch.from_numpy(v).to(device) for o, v in zip(self.positions.get_outputs(), self.positions.run(None, feed))}
        values.update((name, idx) for name, idx in given.items() if name in self.inputs)
        size = sum(v.numel() * v.element_size() for v in values.values())
        if keep and (len(self.kept) + 1) * size <= KEPT_INDEX_BYTES:
            self.kept[run] = values
        return values


class OrtEngine:
    """A blocked engine's plan executed by ONNX Runtime; the session for a chunk size is built on first
    use and reused for every later image."""

    def __init__(self, blocked: BlockedEngine, cache: DiskCache | None = None, content: str | None = None) -> None:
        """`content` (the model's `content_digest`) keys the graphs in `cache`; without both, nothing
        is kept across processes."""
        self.blocked, self.program = blocked, blocked.program
        self.cache, self.content = cache, content
        self.device = blocked.program.device
        self.providers = providers(self.device)
        self.sessions: dict[int, _Session] = {}
        self.positions = [torch.as_tensor(e.grid.positions(), device=self.device) for e in blocked.engines]
        # A run's activations come from ORT's arena, emptied after an image's last run: without one,
        # each run maps its buffers afresh and pays the page faults; with one never emptied, every
        # kept session would hold its peak (GBs for vgg16) for good.
        self.arena = self.device.type == "cpu"
        self.shrink = ort.RunOptions()
        if self.arena:
            self.shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    @property
    def strategy(self) -> str:
        return self.blocked.strategy

    @property
    def source(self) -> str:
        return self.blocked.source

    @property
    def node_modes(self) -> dict[str, str]:
        return self.blocked.node_modes

    def session(self, clean: CleanImage, fill: torch.Tensor, batch_size: int) -> _Session:
        """The session running chunks of about `batch_size` positions, built the first time from this
        image's activations (only their shapes matter), or read from the disk cache."""
        if batch_size not in self.sessions:
            start = time.perf_counter()
            sizes = self._sizes(batch_size)
            keys, weights = probe_chunk(self.blocked, clean, fill)
            weights = {"chunk.onnx": weights, "tail.onnx": tail_weights(self.blocked, clean, fill) if self.blocked.tail is not None else []}
            key = self._cache_key(tuple(clean.image.shape), fill, sizes)
            found = self.cache.get("ort", key) if self.cache is not None and key is not None else None
            used = _stored_weights(found[1], weights) if found else None
            if used is None:
                if found and self.cache is not None and key is not None:
                    self.cache.discard("ort", key)
                found = None
                parts, used = self._build(clean, fill, sizes, keys, weights)
            else:
                parts = found[0]
            session = self._open(parts["chunk.onnx"], used["chunk.onnx"], weights["chunk.onnx"])
            positions = self._open(parts["positions.onnx"]) if "positions.onnx" in parts else None
            tail = self._open(parts["tail.onnx"], used["tail.onnx"], weights["tail.onnx"]) if "tail.onnx" in parts else None
            build_s = _seconds(found[1].get("build_s")) if found else time.perf_counter() - start
            pending = (key, parts, {"build_s": build_s, "weights": _weights_meta(used, weights)}) if not found and key is not None else None
            self.sessions[batch_size] = _Session(session, keys, sizes, {i.name for i in session.get_inputs()}, tail, positions, {},
                                                 pending=pending, cached=found is not None, build_s=build_s,
                                                 weight_bytes=sum(w.numel() * w.element_size() for ws in weights.values() for w in ws))
        return self.sessions[batch_size]

    def ready(self, shape: tuple[int, ...], fill: torch.Tensor, batch_size: int) -> bool:
        """Whether the session for `batch_size` and images of `shape` is built, or its graphs are in the disk
        cache: nothing to export."""
        if batch_size in self.sessions:
            return True
        key = self._cache_key(shape, fill, self._sizes(batch_size))
        return self.cache is not None and key is not None and self.cache.has("ort", key)

    def _sizes(self, batch_size: int) -> list[int]:
        return run_sizes([len(e.grid) for e in self.blocked.engines], batch_size)[1]

    def _cache_key(self, shape: tuple[int, ...], fill: torch.Tensor, sizes: list[int]) -> str | None:
        """What the graphs for these run sizes are built from, as a cache key: the model's content and
        structure, every block's grid and evaluation, the image's shape, the fill, the versions."""
        if self.content is None:
            return None
        blocks = [(repr(e.grid), sorted((n, r.value) for n, r in e.repr.items())) for e in self.blocked.engines]
        versions = (hyinf_version, torch.__version__, ort.__version__, importlib.metadata.version("onnx"), OPSET)
        return content_key(versions, str(self.providers), self.content, graph_fingerprint(self.program.graph), blocks,
                           sizes, list(shape), fill.cpu().contiguous().numpy().tobytes())

    def _build(self, clean: CleanImage, fill: torch.Tensor, sizes: list[int], keys: list[Key],
               weights: dict[str, list[torch.Tensor]]) -> tuple[dict[str, bytes], dict[str, list[int]]]:
        """The graphs for these run sizes, exported from the torch engine: the chunk graph, the graph
        computing its index values from positions (where one splits off) and the tail's graph; and the
        indices of the weights each holds as external data."""
        import onnx  # only to build: onnx takes a second to import

        from hyinf.runtime.ort_layout import channels_last_additions

        model, used = lower(self.blocked, clean, fill, sizes, keys, weights["chunk.onnx"])
        parts = self._split(channels_last_additions(onnx.load_from_string(model)), len(sizes))
        holds = {"chunk.onnx": used, "tail.onnx": []}
        if self.blocked.tail is not None:
            parts["tail.onnx"], holds["tail.onnx"] = lower_tail(self.blocked, clean, fill, weights["tail.onnx"])
        return parts, holds

    def _split(self, proto: onnx.ModelProto, blocks: int) -> dict[str, bytes]:
        """The graph computing a chunk graph's index values from its positions, and the graph that
        reads them instead (unchanged, alone, when nothing depends on the positions alone)."""
        from hyinf.runtime.ort_positions import position_model, without_positions

        names = [f"block{b}" for b in range(blocks)]
        part = position_model(proto, names)
        if part is None:
            return {"chunk.onnx": proto.SerializeToString()}
        positions = part[0].SerializeToString()
        session = self._open(positions)
        probe = {i.name: np.zeros(i.shape, dtype=np.int64) for i in session.get_inputs()}
        values = dict(zip(part[1], session.run(part[1], probe)))
        return {"chunk.onnx": without_positions(proto, names, values).SerializeToString(), "positions.onnx": positions}

    def _open(self, model: bytes, used: Sequence[int] = (), weights: Sequence[torch.Tensor] = ()) -> ort.InferenceSession:
        """A session of `model`, given the weights it holds as external data (indices `used` into `weights`)."""
        options = session_options(self.arena)
        add_weights(options, used, weights)
        return ort.InferenceSession(model, options, providers=self.providers)

    def _checked(self, s: _Session, clean: CleanImage, fill: torch.Tensor,
                 runs: Iterator[list[tuple[torch.Tensor, torch.Tensor]]]) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The runs, the first checked against the torch engine at a few positions of every block, so an
        exporter that mistranslates an operator (or a cache entry that does not belong to this model)
        fails loudly instead of silently. A session's graphs go to the disk cache once checked; one
        read back from it was checked in full when built, and its first nonempty block is checked again
        (a torch evaluation per block costs about 0.1 s of resnet18's positions)."""
        for blocks in runs:
            if not s.checked:
                nonempty = [b for b, (idx, _) in enumerate(blocks) if len(idx)]
                for b in nonempty[:1] if s.cached else nonempty:
                    self._check_block(s, clean, fill, b, *blocks[b])
                s.checked = True
                if s.pending is not None and self.cache is not None:
                    self.cache.put("ort", *s.pending)
                s.pending = None
            yield blocks

    def _check_block(self, s: _Session, clean: CleanImage, fill: torch.Tensor, b: int, idx: torch.Tensor, out: torch.Tensor) -> None:
        """A run's outputs for block b's first positions against the torch engine's."""
        idx, out = idx[:CHECK_POSITIONS], out.view(len(idx), -1)[:CHECK_POSITIONS].reshape(-1, *out.shape[1:])
        got = self._finish(s, clean, out, *self._cells(b, idx))
        expected = ImageRun(self.blocked.engines[b], clean, fill).chunk(torch.zeros_like(idx), idx)
        error = float((got - expected).abs().max())
        if error > CHECK_TOLERANCE * max(float(expected.abs().max()), 1e-6):
            raise ModelError(f"ONNX Runtime's lowering of this model disagrees with PyTorch (max difference {error:.3g}): "
                             "an operator was exported wrongly; use backend='torch'")

    def _runs(self, s: _Session, clean: CleanImage, fill: torch.Tensor,
              only: torch.Tensor | None = None) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per run, each block's (positions within the block, model outputs or, with a tail, cut values)
        for one image, at every position or at those `only` (one boolean per position of the whole grid) marks."""
        chosen = [torch.arange(len(p), device=self.device) if only is None else torch.nonzero(only[p])[:, 0] for p in self.positions]
        runs = max(-(-len(c) // size) for c, size in zip(chosen, s.sizes))
        binding = s.session.io_binding()
        fill = fill.contiguous()
        _bind(binding, "fill", fill, s.inputs)
        held = [fill]  # tensors bound by address must outlive the runs
        for k, key in enumerate(s.keys):
            held.append(clean_value(clean, key).contiguous())
            _bind(binding, f"clean{k}", held[-1], s.inputs)
        outputs = []
        for meta in s.session.get_outputs():
            out = torch.empty(meta.shape, dtype=torch.float32, device=self.device)
            binding.bind_output(meta.name, self.device.type, self.device.index or 0, np.float32, list(out.shape), out.data_ptr())
            outputs.append(out)
        for run in range(runs):
            valid, blocks = [], []
            for b, size in enumerate(s.sizes):
                slot = torch.arange(run * size, (run + 1) * size, device=self.device)
                keep = slot < len(chosen[b])
                idx = chosen[b][slot.clamp(max=max(len(chosen[b]) - 1, 0))] if len(chosen[b]) else torch.zeros_like(slot)
                blocks.append(torch.where(keep, idx, torch.zeros_like(idx)))  # padding: position 0 again, discarded
                valid.append((idx, keep))
            for name, value in s.values(run, blocks, keep=only is None).items():
                held.append(value.contiguous())
                _bind(binding, name, held[-1], s.inputs)
            s.session.run_with_iobinding(binding, self.shrink if run == runs - 1 else None)
            # an output holds the same number of rows for each position (changed cells: several)
            yield [(idx[keep], out.view(len(keep), -1)[keep].view(-1, *out.shape[1:])) for (idx, keep), out in zip(valid, outputs)]

    def chunks(self, clean: CleanImage, fill: torch.Tensor, batch_size: int,
               only: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (images, positions in the grid, model outputs), like `BlockedEngine.chunks`, for one image."""
        if clean.image.shape[0] != 1:
            raise SettingsError("the ort backend explains one image at a time")
        s = self.session(clean, fill, batch_size)
        limit = self.blocked.tail_batch(batch_size) if s.tail is not None else 0
        # (positions in the grid, what the run gave for them, their changed cells) of every block of every run
        runs = self._checked(s, clean, fill, self._runs(s, clean, fill, only))
        parts = ((self.positions[b][idx], out, *self._cells(b, idx)) for blocks in runs for b, (idx, out) in enumerate(blocks))
        for positions, *values in batches(parts, limit):
            yield torch.zeros_like(positions), positions, self._finish(s, clean, *values)

    def _cells(self, b: int, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The changed cells (and their counts) that block b's run outputs hold for positions `idx`
        of the block, where the tail starts with a windowed layer; nothing otherwise."""
        windowed = self.blocked.windowed
        return () if windowed is None else self.blocked.engines[b].changed_cells(windowed.source, idx)

    def _finish(self, s: _Session, clean: CleanImage, out: torch.Tensor, *cells: torch.Tensor) -> torch.Tensor:
        """The model's outputs from what runs gave: the outputs themselves, cut values for the tail
        session, or changed cells for the windowed layer and then the tail session."""
        if s.tail is None:
            return out
        windowed = self.blocked.windowed
        if windowed is not None:
            cell, counts = cells
            out = windowed(clean.base[windowed.node.name].expand(len(counts), -1), Cells(out, cell, counts))
        return self._tail(s, out)

    def _tail(self, s: _Session, cut: torch.Tensor) -> torch.Tensor:
        """The model's outputs from the tail session's input values."""
        assert s.tail is not None
        cut = cut.contiguous()
        out = torch.empty(len(cut), *self.program.graph[self.program.graph.output].shape[1:], dtype=torch.float32, device=self.device)
        binding = s.tail.io_binding()
        _bind(binding, "cut", cut, {"cut"})
        binding.bind_output("out", self.device.type, self.device.index or 0, np.float32, list(out.shape), out.data_ptr())
        s.tail.run_with_iobinding(binding, self.shrink)
        return out


def session_options(arena: bool) -> ort.SessionOptions:
    """The options every session of the backend (and of its profiler) runs with."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    return options


def _bind(binding: ort.IOBinding, name: str, value: torch.Tensor, inputs: set[str]) -> None:
    if name in inputs:
        binding.bind_input(name, value.device.type, value.device.index or 0, _ORT_TYPES[value.dtype], list(value.shape), value.data_ptr())
