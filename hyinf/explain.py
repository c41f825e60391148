"""`hyinf.explain`: the occlusion heatmap of one image, exact, by the mode the caller picks."""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from hyinf import drilldown
from hyinf.errors import HyinfError, ModelError, SettingsError
from hyinf.graph.geometry import OcclusionGrid, position_blocks
from hyinf.graph.sources import is_onnx
from hyinf.graph.torch_frontend import trace_torch
from hyinf.kept import Kept
from hyinf.modes import BACKENDS, MODES, OUTPUTS
from hyinf.planner.document import PlanDocument, settings_key
from hyinf.planner.plan import Plan
from hyinf.planner.select import Fetch, choose_plan
from hyinf.plans_db.location import existing_database
from hyinf.profiler.machine import DeviceFingerprint, fingerprint
from hyinf.quality import Quality, compare
from hyinf.runtime.budget import batch_size_for, bytes_per_position, check_limits
from hyinf.runtime.cache import ModelCache, content_digest
from hyinf.runtime.engine import BlockedEngine, CleanImage
from hyinf.runtime.estimate import check_fits, estimate_torch
from hyinf.runtime.naive import naive_chunks
from hyinf.runtime.occlusion import PatchSpans, patch_fill
from hyinf.runtime.program import TorchProgram
from hyinf.runtime.verify import (
    check_batches,
    check_output,
    check_torch,
    float32,
    program_output,
)
from hyinf.runtime.windows import span_mask

if TYPE_CHECKING:  # ONNX, ONNX Runtime and the database load where a run uses them, not on import
    import onnx

    from hyinf.graph.onnx_frontend import OnnxModel
    from hyinf.runtime.ort_backend import OrtEngine

_ORT_ENGINES: ModelCache[OrtEngine] = ModelCache(4)
_ENGINES: Kept[BlockedEngine] = Kept(4)  # a drill-down uses two: its coarse and its fine grid
_PROGRAMS: ModelCache[TorchProgram] = ModelCache(2)  # tracing vgg16 (copy, trace, check) takes 0.75 s of a 6 s approximate run


def _import_onnx(source: onnx.ModelProto | str, image_size: tuple[int, int]) -> OnnxModel:
    """`load_onnx`, remembered for a file the process explains again until the file changes: checking
    and importing vgg16's 528 MB file takes seconds, as long as explaining an image."""
    from hyinf.graph.onnx_frontend import load_onnx

    if not isinstance(source, str | os.PathLike):
        return load_onnx(source, image_size)
    try:
        stat = os.stat(source)
    except OSError:
        return load_onnx(source, image_size)  # which says what is wrong with the path
    return _import_file(os.path.realpath(source), stat.st_mtime_ns, stat.st_size, image_size)


@functools.lru_cache(maxsize=2)  # each entry holds a model's weights
def _import_file(path: str, modified: int, size: int, image_size: tuple[int, int]) -> OnnxModel:
    from hyinf.graph.onnx_frontend import load_onnx

    return load_onnx(path, image_size)


@dataclass(frozen=True)
class Explanation:
    """The result of one occlusion run.

    `scores[i, j]` is the target output with the patch at grid position (i, j); `heatmap` is the drop
    `base_score - scores`; `attribution` has the input's shape and gives every pixel the mean drop of
    the windows covering it (captum.attr.Occlusion's attribution). `node_modes` records how each
    node was evaluated ("incremental", "full", or "unchanged" where the patch never reaches it).
    """

    scores: torch.Tensor
    heatmap: torch.Tensor
    attribution: torch.Tensor
    target: int
    base_score: float
    grid: OcclusionGrid
    mode: str
    batch_size: int
    timings: dict[str, float] = field(default_factory=dict)
    node_modes: dict[str, str] = field(default_factory=dict)
    approximation: Approximation | None = None  # None: exact
    plan_source: str | None = None  # where the plan came from: given, local, registry or planned (None: no plan)


@dataclass(frozen=True)
class Approximation:
    """What an approximate run did: its settings, the occluded images it evaluated (coarse and fine
    passes together; the exact run evaluates `exact_positions`), and, when asked for, its distance
    from the exact heatmap."""

    threshold: float
    drill_down: float
    coarse_stride: tuple[int, int] | None
    positions: int
    exact_positions: int
    quality: Quality | None = None

    def describe(self) -> str:
        parts = [f"projective-field threshold {self.threshold:g}"] if self.threshold < 1 else []
        if self.coarse_stride is not None:
            parts.append(f"drill-down {self.drill_down:g} from stride {self.coarse_stride[0]}x{self.coarse_stride[1]}")
        return f"approximate ({', '.join(parts)}; {self.positions} of {self.exact_positions} occluded images)"


def _as_batch(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise SettingsError(f"image must be a torch.Tensor of shape (C, H, W) or (1, C, H, W), got {type(image).__name__}")
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise SettingsError(f"image must have shape (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    if image.is_complex():
        raise SettingsError(f"image must hold real numbers, got {image.dtype}")
    if image.is_floating_point() and not torch.isfinite(image).all():
        raise SettingsError("the image holds NaN or infinite values")
    return image.to(torch.float32)  # models run in float32; half and double images are cast


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device to run on; the one place that checks a requested accelerator exists."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SettingsError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise SettingsError(f"hyinf runs on 'cpu' or 'cuda', not {dev.type!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device 'cuda' was requested but no CUDA GPU is available; use device='cpu'")
    return dev


def _scores(outputs: torch.Tensor, target: int, output: str) -> torch.Tensor:
    flat = outputs.reshape(outputs.shape[0], -1)
    if output == "softmax":
        flat = torch.softmax(flat, dim=1)
    return flat[:, target]


#: Images up to this many pixels are not sized first: a process's first run on meta tensors costs
#: 1.8 s (a 2-core EPYC), and at 512x512 vgg16, resnet50 and densenet121 hold 0.75-1.1 GiB of
#: activations (about 5.4 GiB at the five times a run peaks at).
ESTIMATE_ABOVE = 512 * 512


def check_work(model: nn.Module, shape: tuple[int, ...], device: torch.device, positions: int, progress: bool) -> None:
    """Before tracing an image larger than ESTIMATE_ABOVE: refuse a run the machine cannot hold, and say
    how large it is when showing progress."""
    if shape[-2] * shape[-1] <= ESTIMATE_ABOVE:
        return
    found = estimate_torch(model, shape)
    if found is None:
        return
    check_fits(found.activation_bytes, device, f"a {shape[-2]}x{shape[-1]} image", positions, found.flops)
    if progress:
        tqdm.write(f"hyinf: {positions:,} positions; {found.activation_bytes / 2**20:,.0f} MiB of activations per image, "
                   f"{positions * found.flops / 1e9:,.0f} GFLOP by naive re-inference", file=sys.stderr)


def _target(target: object, base_out: torch.Tensor, classes: int) -> int:
    """The explained output: the prediction by default, else any integer scalar (Python, numpy or torch) in range."""
    if target is None:
        return int(base_out.reshape(1, -1).argmax())
    if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point() and target.dtype != torch.bool:
        target = target.item()
    try:
        index = operator.index(target) if not isinstance(target, bool) else None  # numpy ints too, never bools
    except TypeError:
        index = None
    if index is None or not 0 <= index < classes:
        raise SettingsError(f"target {target!r} is outside the model's {classes} outputs (0 .. {classes - 1})")
    return index


def compile_engine(program: TorchProgram, grid: OcclusionGrid, mode: str, plan: Plan | PlanDocument | None = None, *,
                   db: str | None = None, model_name: str = "", backend: str = "torch", registry: str | None = None) -> BlockedEngine:
    """The engine for `mode` ("hybrid", "incremental" or "full"), or for `plan` when one is given.

    A hybrid run without a plan uses the plan stored for this model structure, grid and device in
    the plans database (`db`, else $HYINF_DB, else the user's database if it exists), else the plans
    service's (`registry`, else $HYINF_REGISTRY; kept in the local database), or plans now with the
    device's cost model.
    """
    return _compile(program, grid, mode, plan, db=db, model_name=model_name, backend=backend, registry=registry)[0]


def _compile(program: TorchProgram, grid: OcclusionGrid, mode: str, plan: Plan | PlanDocument | None = None, *,
             db: str | None = None, model_name: str = "", backend: str = "torch", registry: str | None = None) -> tuple[BlockedEngine, str | None]:
    """`compile_engine`'s engine, and where its plan came from: given, local, registry, planned (None: a mode without a plan)."""
    if isinstance(plan, Plan):
        unknown = sorted(set(plan.modes) - set(program.graph.by_name))
        if unknown:
            raise SettingsError(f"the plan names nodes this model does not have ({', '.join(unknown[:3])}, ...): it was made for another model")
    if isinstance(plan, Plan) or (plan is None and mode != "hybrid"):
        fixed = plan or Plan.uniform(mode)
        engine = _blocked_engine(program, grid, [(block, fixed) for block in position_blocks(program.graph, grid)], "")
        return engine, "given" if isinstance(plan, Plan) else None
    url = existing_database(db)
    database = None
    if url is not None:
        from hyinf.plans_db import Database

        database = Database(url)
    chosen = choose_plan(program.graph, grid, fingerprint(program.device), given=plan, db=database, model_name=model_name, backend=backend,
                         fetch=_registry_fetch(registry, db))
    return _blocked_engine(program, grid, chosen.blocks, chosen.source), chosen.kind


def _registry_fetch(url: str | None, db: str | None) -> Fetch | None:
    """The lookup of the plans service named by `url` or $HYINF_REGISTRY (None when none is): a plan it
    has is kept in the local database (`db`), so the next run finds it there."""
    from hyinf.registry import Registry, RegistryWarning

    registry = Registry.from_env(url)
    if registry is None:
        return None

    def fetch(fingerprint: str, settings: dict[str, Any], device: DeviceFingerprint) -> tuple[PlanDocument, str] | None:
        found = registry.fetch(fingerprint, settings, device)
        if found is None:
            return None
        from hyinf.plans_db import Database, DatabaseError
        from hyinf.plans_db.store import Provenance

        document = found.document
        try:
            Database(db).save_plan(document.model_fingerprint, settings_key(document.settings), device, None, dict(document.body),
                                   Provenance(publisher=f"registry {registry.url} plan {found.plan_id}"))
        except DatabaseError as e:
            warnings.warn(f"the registry's plan is not kept locally: {e}", RegistryWarning, stacklevel=2)
        differs = f"; its device differs in {', '.join(found.differs)}" if found.match == "class" and found.differs else ""
        return document, f"registry plan {found.plan_id} ({found.match} match{differs})"

    return fetch


def _blocked_engine(program: TorchProgram, grid: OcclusionGrid, blocks: list[tuple[OcclusionGrid, Plan]], source: str) -> BlockedEngine:
    """The engine for these blocks and plans, built once per program: building one (every block's
    windows, offsets and reads) took 0.04-0.12 s of every call on resnet18, vgg16 and resnet50."""
    plans = tuple((block, p.strategy, p.default, tuple(sorted(p.modes.items()))) for block, p in blocks)
    key = (id(program), grid, plans, source)
    return _ENGINES.get(key, lambda: BlockedEngine(program, grid, blocks, source), valid=lambda engine: engine.program is program)


def _plan_key(engine: BlockedEngine) -> tuple[Any, ...]:
    """What a lowered graph depends on besides the model and the settings: the blocks and their modes."""
    return tuple((e.grid.rows, e.grid.cols, tuple(sorted((k, r.value) for k, r in e.repr.items()))) for e in engine.engines)


def collect_scores(
    chunks: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    shape: tuple[int, int],
    select: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    bar: tqdm,
) -> torch.Tensor:
    """(images, positions) scores from (images, positions, outputs) chunks; `select(outputs, images)`
    picks each row's target score. Positions no chunk holds are NaN."""
    scores: torch.Tensor | None = None
    for images, positions, outputs in chunks:
        chosen = select(outputs, images)
        if scores is None:
            scores = torch.full(shape, math.nan, dtype=chosen.dtype, device=chosen.device)
        scores[images, positions] = chosen
        bar.update(len(outputs))
    assert scores is not None
    return scores


def attribution_from(heatmap: torch.Tensor, grid: OcclusionGrid, shape: torch.Size) -> torch.Tensor:
    """Per-pixel mean of the drops of the windows covering it (0 where none does), as captum computes.

    Rows and columns are independent, so the sums over windows are two small matrix products.
    """
    spans = PatchSpans(grid, heatmap.device)
    (height, width), zeros_r, zeros_c = grid.image_size, torch.zeros_like(spans.row_lo), torch.zeros_like(spans.col_lo)
    rows = span_mask(spans.row_lo, spans.row_hi, zeros_r, height).to(torch.float64)  # (grid rows, H): pixels each patch covers
    cols = span_mask(spans.col_lo, spans.col_hi, zeros_c, width).to(torch.float64)
    total = rows.T @ heatmap.to(torch.float64) @ cols
    count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return mean.to(heatmap.dtype).expand(shape).clone()


@dataclass(frozen=True)
class _Pass:
    """One grid ready to run: the clean output, and its chunks at every position or at chosen ones."""

    base_out: torch.Tensor
    chunks: Callable[[torch.Tensor | None], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
    batch_size: int
    mode: str
    node_modes: dict[str, str]
    plan_source: str | None = None  # given | local | registry | planned
    costs: dict[str, float] = field(default_factory=dict)  # seconds of its fixed steps: plan_s, session_s (ORT)


@dataclass(frozen=True)
class _Settings:
    mode: str
    plan: Plan | PlanDocument | None
    db: str | None
    backend: str
    batch_size: int | None
    max_memory: int | None
    registry: str | None = None


def _naive_pass(model: nn.Module, traced: Callable[[], TorchProgram], batch: torch.Tensor, grid: OcclusionGrid, fill: torch.Tensor,
                s: _Settings) -> _Pass:
    try:
        base_out = model(batch.clone())  # a model may write into its input: never into the caller's image
    except Exception as e:
        raise ModelError(f"the model fails on a {tuple(batch.shape)} image: {str(e).splitlines()[0]}") from e
    if not isinstance(base_out, torch.Tensor) or not base_out.is_floating_point():
        kind = type(base_out).__name__ if not isinstance(base_out, torch.Tensor) else f"a {base_out.dtype} tensor"
        raise ModelError(f"the model returns {kind}; hyinf explains models whose output is one float tensor of scores")
    with float32():  # TF32 rounds differently per batch size
        check_batches(model, batch.clone(), model(batch.clone()))
    try:  # the engine's estimate sizes the batches when the model can be traced
        per_position = bytes_per_position(compile_engine(traced(), grid, "full", None))
    except HyinfError:  # untraceable: assume activations of 64 images' size per position
        per_position = 64 * batch.numel() * batch.element_size()
    size = batch_size_for(per_position, len(grid), s.max_memory, s.batch_size, batch.device)
    return _Pass(base_out, lambda only: naive_chunks(model, batch, grid, fill, size, only), size, "naive", {})


def _engine_pass(program: TorchProgram, identity: nn.Module | str | None, batch: torch.Tensor, grid: OcclusionGrid,
                 fill: torch.Tensor, s: _Settings) -> _Pass:
    start = time.perf_counter()
    plan_source = None
    if s.mode == "naive":  # the whole model on every occluded image, in ONNX Runtime
        engine = BlockedEngine(program, grid, [(grid, Plan.uniform("full"))])
    else:
        engine, plan_source = _compile(program, grid, s.mode, s.plan, db=s.db, backend=s.backend, registry=s.registry)
    costs = {"plan_s": time.perf_counter() - start}  # choosing or making the plan, and the engine's windows
    size = batch_size_for(bytes_per_position(engine), len(grid), s.max_memory, s.batch_size, batch.device)
    clean = CleanImage(program, batch)
    runner: BlockedEngine | OrtEngine = engine
    if s.backend == "ort":
        from hyinf.runtime.ort_backend import OrtEngine

        settings = (tuple(batch.shape), grid, s.mode, _plan_key(engine), str(batch.device), size)
        runner = _ORT_ENGINES.get(identity, settings, lambda: _ort_engine(engine, identity)) if identity is not None else OrtEngine(engine)
        building = time.perf_counter()
        runner.session(clean, fill, size)  # built (or read from the disk cache) now, so compile_s holds it
        costs["session_s"] = time.perf_counter() - building
    mode = s.mode if s.mode == "naive" else f"{s.mode} ({engine.strategy}{', ' + engine.source if engine.source else ''})"
    return _Pass(clean.output, lambda only: runner.chunks(clean, fill, size, only), size, mode, engine.node_modes, plan_source, costs)


def _ort_engine(engine: BlockedEngine, identity: nn.Module | str) -> OrtEngine:
    """An ORT engine whose graphs are kept in the user's disk cache, keyed by the model's content."""
    from hyinf.runtime.disk_cache import DiskCache
    from hyinf.runtime.ort_backend import OrtEngine

    cache = DiskCache.default()
    return OrtEngine(engine, cache, content_digest(identity) if cache is not None else None)


def _verify(program: TorchProgram, model: nn.Module, imported: OnnxModel | None, batch: torch.Tensor,
            clean_output: torch.Tensor) -> None:
    """hyinf's program of the model against the model's own runtime on the clean image: the eager module,
    or ONNX Runtime on the original file (verify.TOLERANCE of the output scale). That it evaluates
    batches image by image was checked when it was traced."""
    if imported is None:
        check_torch(model, program, batch, computed=clean_output)
        return
    got = program_output(program, batch, clean_output)
    check_output(imported.reference_output(batch), got, "ONNX Runtime on the original model",
                 lambda: imported.reference_output(batch))


def explain(
    model: nn.Module | onnx.ModelProto | str,
    image: torch.Tensor,
    *,
    target: int | None = None,
    patch: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] = 8,
    patch_value: float | torch.Tensor = 0.0,
    mode: str = "hybrid",
    plan: Plan | PlanDocument | None = None,
    db: str | None = None,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    output: str = "raw",
    batch_size: int | None = None,
    max_memory: int | None = None,
    approx_threshold: float = 1.0,
    drill_down: float = 1.0,
    coarse_stride: int | tuple[int, int] | None = None,
    check_exact: bool = False,
    progress: bool = False,
    registry: str | None = None,
) -> Explanation:
    """Occlusion heatmap of `image` under `model`, equal to naive re-inference of every occluded image
    unless an approximation is asked for.

    `model` is a torch module, an `onnx.ModelProto` or the path of an .onnx file.
    `mode` picks the evaluation: "naive" re-runs the model per occluded image, "full" and
    "incremental" evaluate every node of hyinf's graph that way, "hybrid" follows a plan: the one
    stored in the plans database `db` for this model structure, settings and device, else one made
    now with the device's cost model. `plan` (a `Plan`, a mode per node, or a `PlanDocument` read
    from a plan file) overrides the choice. `patch_value` is a scalar or one value per
    channel, in the model's input space. `output="softmax"` scores class probabilities instead of raw outputs. Positions are evaluated
    `batch_size` at a time, by default as many as fit in `max_memory` bytes (default: 2 GiB on a CPU, a
    quarter of a GPU's free memory).

    Approximations (docs/approximate.md): `approx_threshold` < 1 caps every incrementally evaluated
    node's changed window at that fraction of its map's side; `drill_down` < 1 runs a coarse pass at
    `coarse_stride` (default twice `stride`) and the fine stride only over that fraction of the
    coarse cells where the coarse heatmap is highest. `check_exact` also runs the exact heatmap and
    reports the distance in `approximation.quality` (an exact run has no `approximation`).

    `registry` (else $HYINF_REGISTRY, with $HYINF_TOKEN) names a plans service (`hyinf serve`) asked for
    a hybrid plan when the local database has none; `plan_source` says where the plan came from.
    """
    if mode not in MODES:
        raise SettingsError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if output not in OUTPUTS:
        raise SettingsError(f"output must be 'raw' or 'softmax', got {output!r}")
    if backend not in BACKENDS:
        raise SettingsError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    check_limits(max_memory, batch_size)
    dev = resolve_device(device)
    batch = _as_batch(image).to(dev)
    source = model
    identity: nn.Module | str | None = model if isinstance(model, nn.Module) else None
    imported: OnnxModel | None = None
    if is_onnx(model):
        imported = _import_onnx(model, tuple(batch.shape[-2:]))  # type: ignore[arg-type]
        model, identity = imported.module, imported.digest
    if not isinstance(model, nn.Module):
        raise SettingsError(f"model must be a torch.nn.Module, an onnx.ModelProto or an .onnx path, got {type(model).__name__}")
    grid = OcclusionGrid.make(tuple(batch.shape[-2:]), patch, stride, approx_threshold)  # type: ignore[arg-type]
    if grid.threshold < 1 and mode in ("naive", "full"):
        raise SettingsError(f"the projective-field threshold cuts incrementally evaluated windows; mode {mode!r} has none: "
                            "use mode 'hybrid' or 'incremental'")
    coarse_grid = grid.with_stride(coarse_stride if coarse_stride is not None else (2 * grid.stride[0], 2 * grid.stride[1]))
    drilldown.check_drill_down(drill_down, coarse_grid.stride, grid)
    drilling = drill_down < 1
    fill = patch_fill(patch_value, batch.shape[1], dev, batch.dtype)
    settings = _Settings(mode, plan, db, backend, batch_size, max_memory, registry)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    if imported is None:  # an ONNX import was checked against memory before it ran anything
        check_work(model, tuple(batch.shape), dev, len(grid), progress)

    shape = tuple(batch.shape)

    def traced() -> TorchProgram:  # kept per model: tracing (copy, trace, check) took 0.3 s (resnet18) to 1.9 s (vgg16) of every naive call
        return _PROGRAMS.get(identity, (shape, str(dev)), lambda: trace_torch(model, shape, dev)) if identity is not None else trace_torch(model, shape, dev)

    with torch.no_grad(), contextlib.ExitStack() as stack:
        if mode == "naive" and backend == "torch":
            model = model.to(dev)
            stack.callback(model.train, model.training)  # hyinf explains in eval mode; the caller's mode comes back
            model.eval()

            def prepare(g: OcclusionGrid, s: _Settings) -> _Pass:
                return _naive_pass(model, traced, batch, g, fill, s)
        else:
            program = traced()
            timings["trace_s"] = time.perf_counter() - clock

            def prepare(g: OcclusionGrid, s: _Settings) -> _Pass:
                return _engine_pass(program, identity, batch, g, fill, s)
        fine = prepare(grid, settings)
        timings.update(fine.costs)
        if mode != "naive" or backend != "torch":  # on this image, before any of its numbers are trusted
            verifying = time.perf_counter()
            _verify(program, model, imported, batch, fine.base_out)
            timings["verify_s"] = time.perf_counter() - verifying
        # A coarse grid of fine positions runs on the fine grid's engine (no second plan, engine or clean
        # pass); another has its own plan: only a plan of modes per node (not a document for the fine grid) carries over.
        nested = drilling and drilldown.nested(grid, coarse_grid)
        coarse = prepare(coarse_grid, replace(settings, plan=plan if isinstance(plan, Plan) else None)) if drilling and not nested else None
        timings["compile_s"] = time.perf_counter() - clock - timings.get("trace_s", 0.0) - timings.get("verify_s", 0.0)

        classes = math.prod(fine.base_out.shape[1:])
        target = _target(target, fine.base_out, classes)
        base_score = float(_scores(fine.base_out, target, output)[0])

        def select(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            return _scores(out, target, output)

        start = time.perf_counter()
        with tqdm(total=len(coarse_grid) if drilling else len(grid), desc=f"occlusion ({mode})", unit="pos", disable=not progress, leave=False) as bar:
            if not drilling:
                scores = collect_scores(fine.chunks(None), (1, len(grid)), select, bar)[0]
                evaluated = len(grid)
            else:
                shared = drilldown.shared(grid, coarse_grid)
                if coarse is None:  # nested: the coarse positions are the shared ones, in the same row-major order
                    at = torch.as_tensor(shared, device=dev)
                    coarse_scores = collect_scores(fine.chunks(at), (1, len(grid)), select, bar)[0][at]
                else:
                    coarse_scores = collect_scores(coarse.chunks(None), (1, len(coarse_grid)), select, bar)[0]
                chosen = drilldown.selected(base_score - coarse_scores, grid, coarse_grid, drill_down) & ~shared
                only = torch.as_tensor(chosen, device=dev)
                bar.total += int(chosen.sum())
                bar.refresh()
                fine_scores = (collect_scores(fine.chunks(only), (1, len(grid)), select, bar)[0] if chosen.any()
                               else coarse_scores.new_full((len(grid),), math.nan))  # every fine position was a coarse one
                scores = drilldown.combine(fine_scores, only, coarse_scores, grid, coarse_grid)
                evaluated = len(coarse_grid) + int(chosen.sum())
        timings["positions_s"] = time.perf_counter() - start
    timings["total_s"] = time.perf_counter() - clock
    scores = scores.reshape(grid.shape).cpu()
    heatmap = base_score - scores
    approximation = None
    if grid.threshold < 1 or drilling:
        quality = None
        if check_exact:
            exact = explain(source, image, target=target, patch=patch, stride=stride, patch_value=patch_value, mode=mode,
                            plan=plan if isinstance(plan, Plan) else None, db=db, backend=backend, device=device, output=output,
                            batch_size=batch_size, max_memory=max_memory, progress=progress, registry=registry)
            quality = compare(heatmap, exact.heatmap)
            timings["exact_s"] = exact.timings["total_s"]
        approximation = Approximation(grid.threshold, drill_down, coarse_grid.stride if drilling else None, evaluated, len(grid), quality)
    return Explanation(
        scores=scores,
        heatmap=heatmap,
        attribution=attribution_from(heatmap, grid, image.shape),
        target=target,
        base_score=base_score,
        grid=grid,
        mode=fine.mode if approximation is None else f"{fine.mode}, {approximation.describe()}",
        batch_size=fine.batch_size,
        timings=timings,
        node_modes=fine.node_modes,
        approximation=approximation,
        plan_source=fine.plan_source,
    )
