"""`hyinf.Explainer`: a model and occlusion settings, explaining one image or many.

The Explainer owns what is worth building once per model: the traced program, the plans and engines
made for it, an ONNX file's import and ONNX Runtime sessions. A process explaining many images keeps
one Explainer; nothing is kept between Explainers but the on-disk cache of ORT graphs.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm import tqdm

from hyinf import drilldown
from hyinf.errors import HyinfError, ModelError, SettingsError
from hyinf.explain import (
    Approximation,
    Explanation,
    _compile,
    _plan_key,
    as_batch,
    attribution_from,
    check_work,
    collect_scores,
    compile_engine,
    pick_target,
    resolve_device,
    target_scores,
)
from hyinf.graph.geometry import GROUPS_PER_AXIS, OcclusionGrid
from hyinf.graph.sources import is_onnx
from hyinf.graph.torch_frontend import trace_torch
from hyinf.kept import Kept
from hyinf.modes import BACKEND_CHOICES, MODES, OUTPUTS
from hyinf.planner.document import PlanDocument
from hyinf.planner.plan import Plan
from hyinf.planner.quality_target import Calibration, check_target
from hyinf.quality import compare
from hyinf.runtime.budget import batch_size_for, bytes_per_position, check_limits
from hyinf.runtime.cache import ModelCache, content_digest
from hyinf.runtime.cuda_graphs import GraphedEngine, check_cuda_graphs
from hyinf.runtime.engine import BlockedEngine, CleanImage
from hyinf.runtime.naive import naive_chunks
from hyinf.runtime.occlusion import patch_fill
from hyinf.runtime.ort_growth import Growth
from hyinf.runtime.precision import check_precision, distance, precision_scope
from hyinf.runtime.program import TorchProgram
from hyinf.runtime.verify import (
    check_batches,
    check_output,
    check_torch,
    float32,
    program_output,
    run_program,
)

if TYPE_CHECKING:  # ONNX and ONNX Runtime load where a run uses them, not on import
    import onnx

    from hyinf.auto_backend import AutoBackend, OrtOutlook, StoredSaving
    from hyinf.graph.onnx_frontend import OnnxModel
    from hyinf.planner.select import BackendChoice
    from hyinf.runtime.ort_backend import OrtEngine

#: Most images whose positions share chunks in `explain_batch`: each holds its clean activations.
MAX_GROUP = 32


@dataclass(frozen=True)
class _Pass:
    """One grid ready to run: the clean outputs, and chunks at every position or at chosen ones."""

    base_out: torch.Tensor
    chunks: Callable[[torch.Tensor | None], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
    batch_size: int
    mode: str
    node_modes: dict[str, str]
    plan_source: str | None = None  # given | local | registry | planned
    costs: dict[str, float] = field(default_factory=dict)  # seconds of its fixed steps: plan_s, session_s (ORT)


class Explainer:
    """Occlusion heatmaps of images under one model with fixed settings, equal to naive re-inference of
    every occluded image unless an approximation is asked for.

    `model` is a torch module, an `onnx.ModelProto` or the path of an .onnx file. `mode` picks the
    evaluation: "naive" re-runs the model per occluded image, "full" and "incremental" evaluate every
    node of hyinf's graph that way, "hybrid" follows a plan: `plan` if given (a `Plan`, a mode per
    node, or a `PlanDocument` read from a plan file), else the one stored in the plans database `db`
    for this model structure, settings and device, else the plans service's (`registry`, else
    $HYINF_REGISTRY with $HYINF_TOKEN), else one made now with the device's cost model.
    `patch_value` is a scalar or one value per channel, in the model's input space; `output="softmax"`
    scores class probabilities. Positions run `batch_size` at a time, by default as many as fit
    `max_memory` bytes (2 GiB on a CPU, a quarter of a GPU's free memory).

    Approximations (docs/approximate.md): `approx_threshold` < 1 caps every incrementally evaluated
    node's changed window at that fraction of its map's side; `drill_down` < 1 runs a coarse pass at
    `coarse_stride` (default twice `stride`) and the fine stride only over that fraction of the coarse
    cells where the coarse heatmap is highest. `check_exact` also computes the exact heatmap and
    reports the distance in `approximation.quality`.

    On a GPU (docs/gpu.md): `precision` "float32" (exact; the caller's TF32 flags are set aside for the
    run) or "tf32" (tensor cores; `Explanation.precision_distance` says how far the clean outputs are
    from float32); `cuda_graphs` replays each block's chunk program from a captured CUDA graph.

    Settings are checked here; what depends on the image (its size against patch and stride, the
    target) is checked per image. Changing the module's weights between calls is seen: its program
    is traced again.
    """

    def __init__(
        self,
        model: nn.Module | onnx.ModelProto | str,
        *,
        patch: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] = 8,
        patch_value: float | torch.Tensor = 0.0,
        mode: str = "hybrid",
        plan: Plan | PlanDocument | None = None,
        db: str | None = None,
        backend: str = "auto",
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
        target_ssim: float | None = None,
        precision: str = "float32",
        cuda_graphs: bool = False,
    ) -> None:
        if mode not in MODES:
            raise SettingsError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if output not in OUTPUTS:
            raise SettingsError(f"output must be 'raw' or 'softmax', got {output!r}")
        if backend not in BACKEND_CHOICES:
            raise SettingsError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
        if not (is_onnx(model) or isinstance(model, nn.Module)):
            raise SettingsError(f"model must be a torch.nn.Module, an onnx.ModelProto or an .onnx path, got {type(model).__name__}")
        check_limits(max_memory, batch_size)
        drilldown.check_ratio(drill_down)
        if target_ssim is not None:
            check_target(target_ssim, "target_ssim")
            if approx_threshold != 1 or drill_down != 1 or coarse_stride is not None or plan is not None or mode != "hybrid":
                raise SettingsError("target_ssim takes its approximate settings and plan from a stored calibration: "
                                    "leave out approx_threshold, drill_down, coarse_stride, plan and mode")
        self.model, self.device = model, resolve_device(device)
        self.precision = check_precision(precision, self.device, backend)
        self.cuda_graphs = check_cuda_graphs(cuda_graphs, self.device, backend, mode)
        self._graphed: weakref.WeakKeyDictionary[BlockedEngine, GraphedEngine] = weakref.WeakKeyDictionary()
        self.patch, self.stride, self.patch_value, self.mode, self.plan = patch, stride, patch_value, mode, plan
        self.db, self.backend, self.output, self.registry = db, backend, output, registry
        self.batch_size, self.max_memory = batch_size, max_memory
        self.approx_threshold, self.drill_down, self.coarse_stride = approx_threshold, drill_down, coarse_stride
        self.check_exact, self.progress, self.target_ssim = check_exact, progress, target_ssim
        self.calibration: Calibration | None = None  # set on the Explainers a target chose settings for
        self._calibrated: dict[tuple[int, ...], Explainer] = {}
        self.backend_reason: str | None = None  # why `auto` chose this Explainer's backend
        self._auto: dict[tuple[int, ...], AutoBackend] = {}  # backend auto: the choice for each image size
        self._backends: dict[tuple[tuple[int, ...], str], Explainer] = {}  # backend auto: per size, an Explainer per backend
        self._programs: ModelCache[TorchProgram] = ModelCache(2)  # by image shape: tracing vgg16 took 0.75-1.9 s
        self._engines: Kept[BlockedEngine] = Kept(4)  # a drill-down uses two: its coarse and its fine grid
        self._ort: ModelCache[OrtEngine] = ModelCache(4)
        self._growth: ModelCache[Growth] = ModelCache(4)  # ORT: when one block of positions gives way to the plan's blocks
        self._imports: Kept[OnnxModel] = Kept(2)  # checking and importing vgg16's 528 MB file takes seconds

    # -- the model, per image size ------------------------------------------------------------------

    def _imported(self, image_size: tuple[int, int]) -> OnnxModel:
        """The ONNX model imported for this image size, again only when its file changed."""
        from hyinf.graph.onnx_frontend import load_onnx

        source = self.model
        if not isinstance(source, str | os.PathLike):
            return self._imports.get((id(source), image_size), lambda: load_onnx(source, image_size))
        try:
            stat = os.stat(source)
        except OSError:
            return load_onnx(source, image_size)  # which says what is wrong with the path
        key = (os.path.realpath(source), stat.st_mtime_ns, stat.st_size, image_size)
        return self._imports.get(key, lambda: load_onnx(source, image_size))

    def _resolve(self, batch: torch.Tensor) -> tuple[nn.Module, nn.Module | str, OnnxModel | None]:
        """The module to run, what identifies it for the caches, and the ONNX import it came from."""
        if isinstance(self.model, nn.Module):
            return self.model, self.model, None
        imported = self._imported(tuple(batch.shape[-2:]))  # type: ignore[arg-type]
        return imported.module, imported.digest, imported

    def _traced(self, model: nn.Module, identity: nn.Module | str, shape: tuple[int, ...]) -> TorchProgram:
        """The program of `model` for one image of `shape`, traced once per weights and shape."""
        one = (1, *shape[1:])
        return self._programs.get(identity, (one, str(self.device)), lambda: trace_torch(model, one, self.device))

    # -- one image ----------------------------------------------------------------------------------

    def explain(self, image: torch.Tensor, target: int | None = None) -> Explanation:
        """The heatmap of `image` ((C, H, W) or (1, C, H, W)) for output `target` (default: the prediction)."""
        return self.explain_batch([image], [target])[0]

    def explain_batch(self, images: Sequence[torch.Tensor], targets: Sequence[int | None] | None = None) -> list[Explanation]:
        """The heatmaps of several images, equal to `explain` on each. Images of one size have their
        positions evaluated in the same chunks (a group holds at most MAX_GROUP images, and as many as
        fill a chunk of every block): the clean pass, the check and the plan are paid once per group."""
        images = list(images)
        wanted = [None] * len(images) if targets is None else list(targets)
        if len(wanted) != len(images):
            raise SettingsError(f"{len(images)} images but {len(wanted)} targets; give one target per image (None: the prediction)")
        if not images:
            return []
        with precision_scope(self.device, self.precision):  # the caller's TF32 flags come back afterwards
            return self._explain_batch(images, wanted)

    def _explain_batch(self, images: list[torch.Tensor], wanted: list[int | None]) -> list[Explanation]:
        batches = [as_batch(image).to(self.device) for image in images]
        if self.target_ssim is not None:  # each size's calibrated settings, found once
            return self._delegate(images, wanted, [self._for_target(batch) for batch in batches])
        if self.backend == "auto":  # each size's backend, chosen for the images of this call
            sizes: dict[tuple[int, ...], list[torch.Tensor]] = {}
            for batch in batches:
                sizes.setdefault(tuple(batch.shape), []).append(batch)
            runners, choosing = {}, {}  # choosing: each image's share of the seconds its size's choice took
            for shape, group in sizes.items():
                start = time.perf_counter()
                runners[shape] = self._for_backend(group[0], len(group))
                choosing[shape] = (time.perf_counter() - start) / len(group)
            results = self._delegate(images, wanted, [runners[tuple(batch.shape)] for batch in batches])
            return [replace(r, timings={**r.timings, "choose_s": choosing[tuple(b.shape)],
                                        "total_s": r.timings.get("total_s", 0.0) + choosing[tuple(b.shape)]})
                    for r, b in zip(results, batches, strict=True)]
        if self.mode == "naive" or self.backend == "ort" or self.drill_down < 1:
            # One image per pass: ORT sessions are built for one image, and a drill-down's fine positions differ per image.
            return [self._one(image, target) for image, target in zip(images, wanted, strict=True)]
        results: list[Explanation | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, batch in enumerate(batches):
            by_shape.setdefault(tuple(batch.shape), []).append(i)
        for members in by_shape.values():
            model, _, imported = self._resolve(batches[members[0]])
            if imported is None:  # before tracing; an ONNX import was checked against memory before it ran anything
                check_work(model, tuple(batches[members[0]].shape), self.device, len(self._grid(batches[members[0]])), self.progress)
            size = self._group_size(batches[members[0]], len(members))
            for start in range(0, len(members), size):
                chosen = members[start : start + size]
                done = self._group([batches[i] for i in chosen], [wanted[i] for i in chosen], [images[i].shape for i in chosen])
                for i, result in zip(chosen, done, strict=True):
                    results[i] = result
        return [r for r in results if r is not None]

    @staticmethod
    def _delegate(images: list[torch.Tensor], targets: list[int | None], runners: list[Explainer]) -> list[Explanation]:
        """Each image explained by its runner (an Explainer with settings chosen for its size), in order."""
        found: dict[int, Explanation] = {}
        for runner in {id(r): r for r in runners}.values():
            members = [i for i, r in enumerate(runners) if r is runner]
            found.update(zip(members, runner.explain_batch([images[i] for i in members], [targets[i] for i in members]), strict=True))
        return [found[i] for i in range(len(images))]

    def _for_backend(self, batch: torch.Tensor, images: int) -> Explainer:
        """This Explainer on the backend `auto` picks for the next `images` images of this size: the backend
        whose best plan is predicted faster (the choice `hyinf plan --backend auto` stored, else predicted
        now) once its saving pays for what ORT has left to build (`hyinf.auto_backend`); torch for naive
        re-inference (no plan to compare), TF32 and CUDA graphs, and where ORT cannot run on the device."""
        from hyinf.auto_backend import AutoBackend

        shape = tuple(batch.shape)
        if shape not in self._auto:
            choice = self._backend_choice(batch)
            stored = self._stored_saving(batch) if choice.backend == "ort" and choice.predicted_s else None
            self._auto[shape] = AutoBackend(choice, stored.load() if stored is not None else 0.0, stored)
        auto = self._auto[shape]
        outlook = None
        if auto.choice.backend == "ort" and auto.choice.predicted_s:  # a prediction to weigh the build against
            outlook = self._runner(shape, "ort")._ort_outlook(batch, auto.choice.predicted_s["torch"])
        backend, reason = auto.pick(images, outlook)
        runner = self._runner(shape, backend)
        runner.backend_reason = reason
        return runner

    def _stored_saving(self, batch: torch.Tensor) -> StoredSaving:
        """Where what ORT would have saved on images like `batch` is kept: per model structure and settings."""
        from hyinf import __version__ as hyinf_version
        from hyinf.auto_backend import StoredSaving
        from hyinf.graph.fingerprint import graph_fingerprint
        from hyinf.runtime.disk_cache import DiskCache, content_key

        model, identity, _ = self._resolve(batch)
        graph = self._traced(model, identity, tuple(batch.shape)).graph
        key = content_key(hyinf_version, graph_fingerprint(graph), repr(self._grid(batch)), self.mode, str(self.device))
        return StoredSaving(DiskCache.default(), key)

    def _runner(self, shape: tuple[int, ...], backend: str) -> Explainer:
        """This Explainer on `backend` for images of `shape`, sharing its programs, engines and imports."""
        if (shape, backend) not in self._backends:
            runner = copy.copy(self)
            runner.backend = backend
            self._backends[shape, backend] = runner
        return self._backends[shape, backend]

    def _backend_choice(self, batch: torch.Tensor) -> BackendChoice:
        """The backend whose positions are predicted faster for images like `batch`, before any build is weighed."""
        from hyinf.planner.select import BackendChoice, choose_backend, stored_backend_choice
        from hyinf.plans_db import Database
        from hyinf.plans_db.location import existing_database
        from hyinf.profiler.machine import fingerprint

        if self.mode == "naive":
            return BackendChoice("torch", {}, "torch: naive re-inference has no plan whose costs the backends could compare")
        if self.precision == "tf32" or self.cuda_graphs:
            return BackendChoice("torch", {}, "torch: TF32 and CUDA graphs are the torch backend's")
        if isinstance(self.plan, PlanDocument):
            backend = str(self.plan.settings.get("backend", "torch"))
            return BackendChoice(backend, {}, f"{backend}: the backend the given plan was made for")
        if self.device.type == "cuda" and not _ort_cuda():
            return BackendChoice("torch", {}, "torch: ONNX Runtime has no CUDA provider here (pip install onnxruntime-gpu)")
        model, identity, imported = self._resolve(batch)
        if imported is None:  # before tracing; an ONNX import was checked against memory before it ran anything
            check_work(model, tuple(batch.shape), self.device, len(self._grid(batch)), self.progress)
        graph, grid, fp = self._traced(model, identity, tuple(batch.shape)).graph, self._grid(batch), fingerprint(self.device)
        url = existing_database(self.db)
        with contextlib.ExitStack() as stack:
            db = stack.enter_context(Database(url)) if url is not None else None
            stored = stored_backend_choice(graph, grid, fp, db) if self.mode == "hybrid" else None
            return stored or choose_backend(graph, grid, fp, db, ALTERNATIVES[self.mode])

    def _ort_outlook(self, batch: torch.Tensor, torch_s: float) -> OrtOutlook:
        """What this (ORT) Explainer has left to pay before its positions for images like `batch`, predicted
        from the state of its sessions and the disk cache (`torch_s`: torch's predicted positions seconds)."""
        from hyinf.auto_backend import OrtOutlook
        from hyinf.runtime.onnx_export import weight_bytes
        from hyinf.runtime.ort_growth import open_s, predicted_build_s

        model, identity, _ = self._resolve(batch)
        program, grid, fill = self._traced(model, identity, tuple(batch.shape)), self._grid(batch), self._fill(batch)
        blocked, source = self._engine(program, grid, self.mode, self.plan)
        engine, ort_engine, size, growth = self._ort_engine(program, identity, batch, grid, blocked, source, fill,
                                                            self._chunk_size(blocked, batch, grid))
        factor = 1 / max(1 - growth.saving, 1e-9) if growth is not None else 1.0
        if size in ort_engine.sessions:
            return OrtOutlook(0.0, factor, "build nothing")
        weights = weight_bytes(model)
        if ort_engine.ready(tuple(batch.shape), fill, size):
            return OrtOutlook(open_s(weights), factor, "open its cached graphs")
        build = predicted_build_s(weights, len(program.graph.nodes), torch_s, len(engine.engines))
        return OrtOutlook(build, factor, "build its graphs")

    def _for_target(self, batch: torch.Tensor) -> Explainer:
        """This Explainer with the settings and plan of the stored calibration that meets `target_ssim`
        for images of this size (sharing its programs, engines and imports)."""
        shape = tuple(batch.shape)
        if shape not in self._calibrated:
            from hyinf.calibration import find_calibrated
            from hyinf.plans_db import Database
            from hyinf.plans_db.location import existing_database
            from hyinf.profiler.machine import fingerprint

            model, identity, _ = self._resolve(batch)
            program = self._traced(model, identity, shape)
            grid = OcclusionGrid.make(tuple(batch.shape[-2:]), self.patch, self.stride)  # type: ignore[arg-type]
            url = existing_database(self.db)
            with contextlib.ExitStack() as stack:
                db = stack.enter_context(Database(url)) if url is not None else None
                document = find_calibrated(db, program.graph, grid, fingerprint(self.device), self.backend, self.target_ssim)  # type: ignore[arg-type]
            found = document.calibration
            assert found is not None
            runner = copy.copy(self)
            runner.target_ssim, runner.plan, runner.calibration = None, document, found
            if self.backend == "auto":  # the calibration measured its speed on the backend its plan was made for
                runner.backend = document.settings.get("backend", "torch")
                runner.backend_reason = f"{runner.backend}: the backend of the calibrated plan for SSIM {found.target_ssim:g}"
            runner.approx_threshold, runner.drill_down = found.approx_threshold, found.drill_down
            runner.coarse_stride = tuple(found.coarse_stride) if found.coarse_stride else None  # type: ignore[assignment]
            self._calibrated[shape] = runner
        return self._calibrated[shape]

    def _grid(self, batch: torch.Tensor) -> OcclusionGrid:
        grid = OcclusionGrid.make(tuple(batch.shape[-2:]), self.patch, self.stride, self.approx_threshold)  # type: ignore[arg-type]
        if grid.threshold < 1 and self.mode in ("naive", "full"):
            raise SettingsError(f"the projective-field threshold cuts incrementally evaluated windows; mode {self.mode!r} has none: "
                                "use mode 'hybrid' or 'incremental'")
        return grid

    def _group_size(self, batch: torch.Tensor, count: int) -> int:
        """How many images of this shape share chunks: enough that a chunk of the median block is full."""
        if count == 1:
            return 1
        model, identity, _ = self._resolve(batch)
        grid = self._grid(batch)
        engine, _ = self._engine(self._traced(model, identity, tuple(batch.shape)), grid, self.mode, self.plan)
        chunk = batch_size_for(bytes_per_position(engine), MAX_GROUP * len(grid), self.max_memory, self.batch_size, self.device)
        block = statistics.median(len(e.grid) for e in engine.engines)
        return max(1, min(count, MAX_GROUP, math.ceil(chunk / block)))

    def _engine(self, program: TorchProgram, grid: OcclusionGrid, mode: str, plan: Plan | PlanDocument | None,
                groups_per_axis: int = GROUPS_PER_AXIS) -> tuple[BlockedEngine, str | None]:
        return _compile(program, grid, mode, plan, db=self.db, backend=self.backend, registry=self.registry, kept=self._engines,
                        groups_per_axis=groups_per_axis)

    def _chunk_size(self, engine: BlockedEngine, batch: torch.Tensor, grid: OcclusionGrid) -> int:
        """Positions per chunk for `engine` over `grid` for the images of `batch`."""
        return batch_size_for(bytes_per_position(engine), batch.shape[0] * len(grid), self.max_memory, self.batch_size, batch.device)

    def _fill(self, batch: torch.Tensor) -> torch.Tensor:
        return patch_fill(self.patch_value, batch.shape[1], self.device, batch.dtype)

    # -- passes -------------------------------------------------------------------------------------

    def _naive_pass(self, model: nn.Module, traced: Callable[[], TorchProgram], batch: torch.Tensor, grid: OcclusionGrid,
                    fill: torch.Tensor) -> _Pass:
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
        size = batch_size_for(per_position, len(grid), self.max_memory, self.batch_size, batch.device)
        return _Pass(base_out, lambda only: naive_chunks(model, batch, grid, fill, size, only), size, "naive", {})

    def _engine_pass(self, program: TorchProgram, identity: nn.Module | str, batch: torch.Tensor, grid: OcclusionGrid,
                     fill: torch.Tensor, plan: Plan | PlanDocument | None) -> _Pass:
        """The engine's pass over `batch` (one image, or several whose positions share chunks)."""
        start = time.perf_counter()
        plan_source = None
        if self.mode == "naive":  # the whole model on every occluded image, in ONNX Runtime
            engine = BlockedEngine(program, grid, [(grid, Plan.uniform("full"))])
        else:
            engine, plan_source = self._engine(program, grid, self.mode, plan)
        costs = {"plan_s": time.perf_counter() - start}  # choosing or making the plan, and the engine's windows
        size = self._chunk_size(engine, batch, grid)
        clean = CleanImage(program, batch)
        runner: BlockedEngine | OrtEngine | GraphedEngine = engine
        if self.cuda_graphs:  # captured on the first chunks of each shape, replayed for every later one
            if engine not in self._graphed:
                self._graphed[engine] = GraphedEngine(engine)
            runner = self._graphed[engine]
        growth, note = None, ""
        if self.backend == "ort":
            blocks = len(engine.engines)
            engine, ort_engine, size, growth = self._ort_engine(program, identity, batch, grid, engine, plan_source, fill, size)
            runner = ort_engine
            building = time.perf_counter()
            session = ort_engine.session(clean, fill, size)  # built (or read from the disk cache) now, so compile_s holds it
            costs["session_s"] = time.perf_counter() - building
            if growth is not None:
                growth.built(session.build_s, session.weight_bytes)
                note = f"; one block of positions until the {blocks}-block graph pays for its build"
        mode = self.mode if self.mode == "naive" else f"{self.mode} ({engine.strategy}{', ' + engine.source if engine.source else ''}{note})"

        def chunks(only: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            start = time.perf_counter()
            yield from runner.chunks(clean, fill, size, only)
            if growth is not None:
                growth.ran(time.perf_counter() - start)
        return _Pass(clean.output, chunks, size, mode, engine.node_modes, plan_source, costs)

    def _ort_engine(self, program: TorchProgram, identity: nn.Module | str, batch: torch.Tensor, grid: OcclusionGrid,
                    blocked: BlockedEngine, plan_source: str | None, fill: torch.Tensor,
                    size: int) -> tuple[BlockedEngine, OrtEngine, int, Growth | None]:
        """The blocked engine an ORT run evaluates, its ORT engine and chunk size, and the `Growth` that
        chose it: the plan's blocks where their graph is built or in the disk cache, where the plan was
        given, stored or fetched, and once one block has lost what building them costs; else one block."""
        settings = (tuple(batch.shape), grid, self.mode, _plan_key(blocked), str(batch.device), size)
        ort_engine = self._ort.get(identity, settings, lambda: _ort_engine(blocked, identity))
        if plan_source not in (None, "planned") or len(blocked.engines) == 1 or ort_engine.ready(tuple(batch.shape), fill, size):
            return blocked, ort_engine, size, None
        single, _ = self._engine(program, grid, self.mode, None, groups_per_axis=1)
        growth = self._growth.get(identity, settings, lambda: Growth.of(blocked, single))
        if growth.grown:
            return blocked, ort_engine, size, None
        size = self._chunk_size(single, batch, grid)
        single_settings = (tuple(batch.shape), grid, self.mode, _plan_key(single), str(batch.device), size)
        return single, self._ort.get(identity, single_settings, lambda: _ort_engine(single, identity)), size, growth

    # -- running ------------------------------------------------------------------------------------

    def _group(self, batches: list[torch.Tensor], targets: list[int | None], shapes: list[torch.Size]) -> list[Explanation]:
        """Exact heatmaps (or threshold-approximate ones) of images of one shape through one engine pass."""
        batch = torch.cat(batches)
        model, identity, imported = self._resolve(batch)
        grid = self._grid(batch)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        with torch.no_grad():
            program = self._traced(model, identity, tuple(batch.shape))
            timings["trace_s"] = time.perf_counter() - clock
            run = self._engine_pass(program, identity, batch, grid, torch.cat([self._fill(b) for b in batches]), self.plan)
            timings.update(run.costs)
            verifying = time.perf_counter()
            _verify(program, model, imported, batch, run.base_out)  # on these images, before any of their numbers are trusted
            off = self._precision_distance(program, model, batch, run.base_out)
            timings["verify_s"] = time.perf_counter() - verifying
            timings["compile_s"] = time.perf_counter() - clock - timings["trace_s"] - timings["verify_s"]
            classes = math.prod(run.base_out.shape[1:])
            chosen = [pick_target(t, run.base_out[i : i + 1], classes) for i, t in enumerate(targets)]
            picked = torch.as_tensor(chosen, device=self.device)
            base = self._scores_of(run.base_out, picked, torch.arange(len(batches), device=self.device))

            def select(out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
                return self._scores_of(out, picked, images)

            start = time.perf_counter()
            with tqdm(total=len(batches) * len(grid), desc=f"occlusion ({self.mode})", unit="pos", disable=not self.progress,
                      leave=False) as bar:
                scores = collect_scores(run.chunks(None), (len(batches), len(grid)), select, bar)
            timings["positions_s"] = time.perf_counter() - start
        timings["total_s"] = time.perf_counter() - clock
        share = {k: v / len(batches) for k, v in timings.items()}  # a group's costs, shared equally among its images
        results = []
        for i, shape in enumerate(shapes):
            row = scores[i].reshape(grid.shape).cpu()
            base_score = float(base[i])
            approximation = None
            if grid.threshold < 1:
                approximation = Approximation(grid.threshold, 1.0, None, len(grid), len(grid), None)
            heatmap = base_score - row
            result = Explanation(
                scores=row, heatmap=heatmap, attribution=attribution_from(heatmap, grid, shape), target=chosen[i],
                base_score=base_score, grid=grid, batch_size=run.batch_size, timings=dict(share), node_modes=run.node_modes,
                mode=run.mode if approximation is None else f"{run.mode}, {approximation.describe()}", approximation=approximation,
                plan_source=run.plan_source, calibration=self.calibration, backend=self.backend, backend_reason=self.backend_reason,
                precision=self.precision, precision_distance=off,
            )
            results.append(self._with_exact(result, batches[i]) if approximation is not None and self.check_exact else result)
        return results

    def _precision_distance(self, program: TorchProgram | None, model: nn.Module, batch: torch.Tensor,
                            base_out: torch.Tensor) -> float | None:
        """TF32 runs: how far the clean outputs are from float32's (the program's, else the model's)."""
        if self.precision == "float32":
            return None
        with torch.no_grad(), float32():
            reference = run_program(program, batch) if program is not None else model(batch.clone())
        return distance(base_out, reference)

    def _scores_of(self, outputs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Each row's target score: row r is image `images[r]`, whose target is `targets[images[r]]`."""
        flat = outputs.reshape(outputs.shape[0], -1)
        if self.output == "softmax":
            flat = torch.softmax(flat, dim=1)
        return torch.gather(flat, 1, targets[images][:, None])[:, 0]

    def _exact(self) -> Explainer:
        """This Explainer without approximations, sharing its programs, engines and imports."""
        exact = copy.copy(self)
        exact.approx_threshold, exact.drill_down, exact.coarse_stride, exact.check_exact = 1.0, 1.0, None, False
        exact.plan = self.plan if isinstance(self.plan, Plan) else None  # a plan document was made for the approximate grid
        return exact

    def _with_exact(self, result: Explanation, image: torch.Tensor) -> Explanation:
        """`result` with its distance from the exact heatmap, which is computed now."""
        assert result.approximation is not None
        exact = self._exact().explain(image, result.target)
        timings = {**result.timings, "exact_s": exact.timings["total_s"]}
        approximation = replace(result.approximation, quality=compare(result.heatmap, exact.heatmap))
        return replace(result, approximation=approximation, timings=timings)

    def _one(self, image: torch.Tensor, target: int | None) -> Explanation:
        """One image through naive torch, an ORT session, or a drill-down's coarse and fine passes."""
        batch = as_batch(image).to(self.device)
        model, identity, imported = self._resolve(batch)
        grid = self._grid(batch)
        coarse_grid = grid.with_stride(self.coarse_stride if self.coarse_stride is not None else (2 * grid.stride[0], 2 * grid.stride[1]))
        drilldown.check_drill_down(self.drill_down, coarse_grid.stride, grid)
        drilling = self.drill_down < 1
        fill = self._fill(batch)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        if imported is None:
            check_work(model, tuple(batch.shape), self.device, len(grid), self.progress)

        def traced() -> TorchProgram:
            return self._traced(model, identity, tuple(batch.shape))

        with torch.no_grad(), contextlib.ExitStack() as stack:
            if self.mode == "naive" and self.backend == "torch":
                model = model.to(self.device)
                stack.callback(model.train, model.training)  # hyinf explains in eval mode; the caller's mode comes back
                model.eval()

                def prepare(g: OcclusionGrid, plan: Plan | PlanDocument | None) -> _Pass:
                    return self._naive_pass(model, traced, batch, g, fill)
            else:
                program = traced()
                timings["trace_s"] = time.perf_counter() - clock

                def prepare(g: OcclusionGrid, plan: Plan | PlanDocument | None) -> _Pass:
                    return self._engine_pass(program, identity, batch, g, fill, plan)
            fine = prepare(grid, self.plan)
            timings.update(fine.costs)
            if self.mode != "naive" or self.backend != "torch":  # on this image, before any of its numbers are trusted
                verifying = time.perf_counter()
                _verify(program, model, imported, batch, fine.base_out)
                timings["verify_s"] = time.perf_counter() - verifying
            naive_torch = self.mode == "naive" and self.backend == "torch"
            off = self._precision_distance(None if naive_torch else program, model, batch, fine.base_out)
            # A coarse grid of fine positions runs on the fine grid's engine (no second plan, engine or clean
            # pass); another has its own plan: only a plan of modes per node (not a document for the fine grid) carries over.
            nested = drilling and drilldown.nested(grid, coarse_grid)
            coarse = prepare(coarse_grid, self.plan if isinstance(self.plan, Plan) else None) if drilling and not nested else None
            timings["compile_s"] = time.perf_counter() - clock - timings.get("trace_s", 0.0) - timings.get("verify_s", 0.0)

            classes = math.prod(fine.base_out.shape[1:])
            target = pick_target(target, fine.base_out, classes)
            base_score = float(target_scores(fine.base_out, target, self.output)[0])

            def select(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
                return target_scores(out, target, self.output)

            start = time.perf_counter()
            with tqdm(total=len(coarse_grid) if drilling else len(grid), desc=f"occlusion ({self.mode})", unit="pos",
                      disable=not self.progress, leave=False) as bar:
                if not drilling:
                    scores = collect_scores(fine.chunks(None), (1, len(grid)), select, bar)[0]
                    evaluated = len(grid)
                else:
                    shared = drilldown.shared(grid, coarse_grid)
                    if coarse is None:  # nested: the coarse positions are the shared ones, in the same row-major order
                        at = torch.as_tensor(shared, device=self.device)
                        coarse_scores = collect_scores(fine.chunks(at), (1, len(grid)), select, bar)[0][at]
                    else:
                        coarse_scores = collect_scores(coarse.chunks(None), (1, len(coarse_grid)), select, bar)[0]
                    chosen = drilldown.selected(base_score - coarse_scores, grid, coarse_grid, self.drill_down) & ~shared
                    only = torch.as_tensor(chosen, device=self.device)
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
            approximation = Approximation(grid.threshold, self.drill_down, coarse_grid.stride if drilling else None, evaluated, len(grid))
        result = Explanation(
            scores=scores, heatmap=heatmap, attribution=attribution_from(heatmap, grid, image.shape), target=target,
            base_score=base_score, grid=grid, batch_size=fine.batch_size, timings=timings, node_modes=fine.node_modes,
            mode=fine.mode if approximation is None else f"{fine.mode}, {approximation.describe()}", approximation=approximation,
            plan_source=fine.plan_source, calibration=self.calibration, backend=self.backend, backend_reason=self.backend_reason,
            precision=self.precision, precision_distance=off,
        )
        return self._with_exact(result, image) if approximation is not None and self.check_exact else result


#: The plan an `auto` choice compares per mode: the best hybrid plan, or the uniform plan the mode runs.
ALTERNATIVES = {"hybrid": "plan", "incremental": "all-incremental", "full": "all-full"}


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _ort_engine(engine: BlockedEngine, identity: nn.Module | str) -> OrtEngine:
    """An ORT engine whose graphs are kept in the user's disk cache, keyed by the model's content."""
    from hyinf.runtime.disk_cache import DiskCache
    from hyinf.runtime.ort_backend import OrtEngine

    cache = DiskCache.default()
    return OrtEngine(engine, cache, content_digest(identity) if cache is not None else None)


def _verify(program: TorchProgram, model: nn.Module, imported: OnnxModel | None, batch: torch.Tensor,
            clean_output: torch.Tensor) -> None:
    """hyinf's program of the model against the model's own runtime on the clean images: the eager module,
    or ONNX Runtime on the original file, image by image (verify.TOLERANCE of the output scale). That it
    evaluates batches image by image was checked when it was traced."""
    if imported is None:
        check_torch(model, program, batch, computed=clean_output)
        return
    for i in range(batch.shape[0]):  # an ONNX file may fix its batch at one image
        image = batch[i : i + 1]
        got = program_output(program, image, clean_output[i : i + 1])
        check_output(imported.reference_output(image), got, "ONNX Runtime on the original model",
                     lambda image=image: imported.reference_output(image))
