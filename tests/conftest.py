"""Shared checks: every fast path is compared with naive re-inference of the occluded images."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch

import hyinf
from hyinf.graph.geometry import OcclusionGrid, changed_regions
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.plan import Mode, Plan

pytest_plugins = ["service_support"]  # its fixtures: databases of their own, and real `hyinf serve` processes

@pytest.fixture(autouse=True, scope="session")
def _own_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never the user's: the plans database hybrid runs read, the folder built artefacts are kept in,
    and a `hyinf daemon` that `hyinf explain` would hand its work to."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYINF_DB", str(tmp_path_factory.mktemp("db") / "hyinf.db"))
        mp.setenv("HYINF_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("HYINF_DAEMON_SOCKET", str(tmp_path_factory.mktemp("daemon") / "none.sock"))
        yield


#: float32 results must agree with naive re-inference to this fraction of the score scale.
RELATIVE_TOLERANCE = 1e-4


def random_plan(model: torch.nn.Module, shape: tuple[int, ...], seed: int) -> Plan:
    """A plan choosing incremental or full at random for every node."""
    graph = trace_torch(model, shape).graph
    rng = random.Random(seed)
    return Plan({n.name: rng.choice(list(Mode)) for n in graph.nodes}, strategy=f"random-{seed}")


def assert_close_to(reference: torch.Tensor, result: torch.Tensor, what: str) -> None:
    scale = float(reference.abs().max().clamp(min=1e-6))
    error = float((result - reference).abs().max())
    assert error <= RELATIVE_TOLERANCE * scale, f"{what}: max error {error:.3g} exceeds {RELATIVE_TOLERANCE} x scale {scale:.3g}"


def assert_matches_naive(model: torch.nn.Module, image: torch.Tensor, *, plans: int = 1, **settings) -> hyinf.Explanation:
    """Every mode (and `plans` random mixed plans) gives naive re-inference's scores."""
    model = model.eval()
    reference = hyinf.explain(model, image, mode="naive", **settings)
    assert float(reference.heatmap.abs().max()) > 0, "the patch never changes the output: the test would prove nothing"
    for mode in ("full", "incremental", "hybrid"):
        result = hyinf.explain(model, image, mode=mode, **settings)
        assert result.target == reference.target
        assert_close_to(reference.scores, result.scores, f"mode {mode}")
    shape = (1, *image.shape[-3:])
    for seed in range(plans):
        result = hyinf.explain(model, image, mode="hybrid", plan=random_plan(model, shape, seed), **settings)
        assert_close_to(reference.scores, result.scores, f"random plan {seed}")
    return reference


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


__all__ = ["OcclusionGrid", "assert_matches_naive", "changed_regions", "random_plan", "seeded"]
