"""Traced programs are kept for a model the process explains again, and rebuilt when it changes."""

from __future__ import annotations

import pytest
import torch
import torchvision

import hyinf
from conftest import assert_close_to, seeded


def _programs(explainer: hyinf.Explainer) -> set[int]:
    return {id(program) for _, program in explainer._programs.kept.entries.values()}


def test_programs_are_reused_until_the_model_changes() -> None:
    seeded()
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    image = torch.rand(3, 32, 32)
    explainer = hyinf.Explainer(model, patch=8, stride=8, mode="incremental")
    first = explainer.explain(image)
    kept = _programs(explainer)
    again = explainer.explain(torch.rand(3, 32, 32))
    assert _programs(explainer) == kept  # found, not traced again
    assert not torch.equal(first.scores, again.scores)
    with torch.no_grad():
        model.fc.weight.mul_(-2.0)  # an in-place update, as a training step makes
    changed = explainer.explain(image)
    assert _programs(explainer) != kept
    assert_close_to(hyinf.explain(model, image, patch=8, stride=8, mode="naive").scores, changed.scores, "after the weights changed")
    kept = _programs(explainer)
    model.fc.weight.data.mul_(3.0)  # a write through .data: the version counter stays as it was
    through_data = explainer.explain(image)
    assert _programs(explainer) != kept
    assert_close_to(hyinf.explain(model, image, patch=8, stride=8, mode="naive").scores, through_data.scores, "after a .data write")
    model.fc = torch.nn.Linear(512, 10)  # a replaced layer: new parameters
    replaced = hyinf.Explainer(model, patch=8, stride=8).explain(image)
    assert_close_to(hyinf.explain(model, image, patch=8, stride=8, mode="naive").scores, replaced.scores, "after a layer was replaced")


def test_kept_values_are_rebuilt_when_invalid_or_evicted_and_failures_are_not_kept() -> None:
    from hyinf.kept import Kept

    builds: list[str] = []

    def build(value: str) -> str:
        builds.append(value)
        return value

    kept: Kept[str] = Kept(2)
    assert kept.get("a", lambda: build("a")) == kept.get("a", lambda: build("other")) == "a"
    assert kept.get("a", lambda: build("a2"), valid=lambda v: v != "a") == "a2"  # invalid: rebuilt
    kept.get("b", lambda: build("b"))
    kept.get("c", lambda: build("c"))  # three keys held by a store of two: "a" goes
    assert kept.get("a", lambda: build("a3")) == "a3" and builds == ["a", "a2", "b", "c", "a3"]

    def fail() -> str:
        raise ValueError("cannot build")

    with pytest.raises(ValueError):
        kept.get("d", fail)
    assert "d" not in kept.entries


def test_engines_are_built_once_per_program_grid_and_plans() -> None:
    from hyinf.explain import _compile
    from hyinf.graph.geometry import OcclusionGrid
    from hyinf.graph.torch_frontend import trace_torch
    from hyinf.kept import Kept
    from hyinf.planner.plan import Plan

    seeded(1)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    program, grid = trace_torch(model, (1, 3, 32, 32)), OcclusionGrid.make((32, 32), 8, 4)
    kept = Kept(4)  # what an Explainer holds

    def compile_engine(program, grid, mode, plan=None):
        return _compile(program, grid, mode, plan, kept=kept)[0]

    engine = compile_engine(program, grid, "incremental")
    assert compile_engine(program, grid, "incremental") is engine
    assert compile_engine(program, grid, "hybrid", Plan.uniform("incremental")) is engine  # the same plans, given
    assert compile_engine(program, grid, "full") is not engine
    assert compile_engine(program, OcclusionGrid.make((32, 32), 8, 4, 0.5), "incremental") is not engine
    assert compile_engine(trace_torch(model, (1, 3, 32, 32)), grid, "incremental") is not engine  # another program


def test_naive_runs_size_their_batches_from_the_kept_program() -> None:
    seeded()
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    explainer = hyinf.Explainer(model, patch=8, stride=8, mode="naive")
    first = explainer.explain(torch.rand(3, 32, 32))
    kept = _programs(explainer)
    assert len(kept) == 1
    again = explainer.explain(torch.rand(3, 32, 32))
    assert _programs(explainer) == kept and again.batch_size == first.batch_size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cpu_model_traced_for_the_gpu_passes_the_in_place_check() -> None:
    seeded()
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()  # stays on the CPU, as the CLI loads it
    from hyinf.graph.torch_frontend import trace_torch

    assert trace_torch(model, (1, 3, 64, 64), "cuda").device.type == "cuda"
    assert torch.backends.cudnn.allow_tf32  # the user's settings are restored
