"""`hyinf.explain`: the occlusion heatmap of one image, exact, by the mode the caller picks."""

from __future__ import annotations

import math
import operator
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from hyinf.errors import SettingsError
from hyinf.graph.geometry import GROUPS_PER_AXIS, OcclusionGrid, position_blocks
from hyinf.kept import Kept
from hyinf.planner.document import PlanDocument, settings_key
from hyinf.planner.plan import Plan
from hyinf.planner.select import Fetch, choose_plan
from hyinf.plans_db.location import existing_database
from hyinf.profiler.machine import DeviceFingerprint, fingerprint
from hyinf.quality import Quality
from hyinf.runtime.engine import BlockedEngine
from hyinf.runtime.estimate import check_fits, estimate_torch
from hyinf.runtime.occlusion import PatchSpans
from hyinf.runtime.program import TorchProgram
from hyinf.runtime.windows import span_mask

if TYPE_CHECKING:  # ONNX, ONNX Runtime and the database load where a run uses them, not on import
    import onnx

    from hyinf.planner.quality_target import Calibration


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
    calibration: Calibration | None = None  # the stored calibration a quality target chose the settings by
    backend: str = "torch"  # the backend that ran
    backend_reason: str | None = None  # why, where backend `auto` chose it
    precision: str = "float32"  # float32 or tf32 (hyinf/runtime/precision.py)
    precision_distance: float | None = None  # tf32: the clean outputs' largest difference from float32, relative


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


def as_batch(image: torch.Tensor) -> torch.Tensor:
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


def target_scores(outputs: torch.Tensor, target: int, output: str) -> torch.Tensor:
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


def pick_target(target: object, base_out: torch.Tensor, classes: int) -> int:
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
             db: str | None = None, model_name: str = "", backend: str = "torch", registry: str | None = None,
             kept: Kept[BlockedEngine] | None = None, groups_per_axis: int = GROUPS_PER_AXIS) -> tuple[BlockedEngine, str | None]:
    """`compile_engine`'s engine, and where its plan came from: given, local, registry, planned (None: a mode without a plan).
    `groups_per_axis` groups the positions into blocks (one: one block); other than the default, a hybrid plan is made now."""
    if isinstance(plan, Plan):
        unknown = sorted(set(plan.modes) - set(program.graph.by_name))
        if unknown:
            raise SettingsError(f"the plan names nodes this model does not have ({', '.join(unknown[:3])}, ...): it was made for another model")
    if isinstance(plan, Plan) or (plan is None and mode != "hybrid"):
        fixed = plan or Plan.uniform(mode)
        engine = _blocked_engine(program, grid, [(block, fixed) for block in position_blocks(program.graph, grid, groups_per_axis)], "", kept)
        return engine, "given" if isinstance(plan, Plan) else None
    url = existing_database(db)
    database = None
    if url is not None:
        from hyinf.plans_db import Database

        database = Database(url)
    chosen = choose_plan(program.graph, grid, fingerprint(program.device), given=plan, db=database, model_name=model_name, backend=backend,
                         fetch=_registry_fetch(registry, db), groups_per_axis=groups_per_axis)
    return _blocked_engine(program, grid, chosen.blocks, chosen.source, kept), chosen.kind


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


def _blocked_engine(program: TorchProgram, grid: OcclusionGrid, blocks: list[tuple[OcclusionGrid, Plan]], source: str,
                    kept: Kept[BlockedEngine] | None) -> BlockedEngine:
    """The engine for these blocks and plans, built once per program where `kept` holds it: building one
    (every block's windows, offsets and reads) took 0.04-0.12 s of every call on resnet18, vgg16 and resnet50."""
    if kept is None:
        return BlockedEngine(program, grid, blocks, source)
    plans = tuple((block, p.strategy, p.default, tuple(sorted(p.modes.items()))) for block, p in blocks)
    key = (id(program), grid, plans, source)
    return kept.get(key, lambda: BlockedEngine(program, grid, blocks, source), valid=lambda engine: engine.program is program)


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


def explain(model: nn.Module | onnx.ModelProto | str, image: torch.Tensor, *, target: int | None = None, **settings: Any) -> Explanation:
    """Occlusion heatmap of `image` under `model`: `hyinf.Explainer(model, **settings).explain(image, target)`.

    The settings are the Explainer's (patch, stride, patch_value, mode, plan, db, backend, device, output,
    batch_size, max_memory, approx_threshold, drill_down, coarse_stride, check_exact, progress, registry).
    Each call builds its program, plan and engines anew: explaining many images, keep one Explainer.
    """
    from hyinf.explainer import Explainer

    return Explainer(model, **settings).explain(image, target)
