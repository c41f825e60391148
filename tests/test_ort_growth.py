"""ORT runs start with one block of positions and build the plan's blocked graph once it pays for its
build (`hyinf.runtime.ort_growth`); every graph on the way equals naive re-inference to 1e-4 of the
score scale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import assert_close_to
from test_tail import vgg_like

import hyinf
from hyinf.planner.plan import Plan
from hyinf.runtime.ort_growth import WEIGHT_S_PER_MIB, Growth

PATCH, STRIDE, SIZE = 6, 2, 32  # several blocks of positions


def test_the_blocked_graph_is_built_once_one_block_has_lost_its_predicted_build() -> None:
    growth = Growth(blocks=9, saving=0.2)
    assert not growth.grown  # nothing built yet: nothing to weigh
    growth.built(2.0, weight_bytes=0)
    assert growth.blocked_build_s == pytest.approx(18.0)
    growth.ran(40.0)
    assert growth.lost_s == pytest.approx(8.0) and not growth.grown
    growth.ran(50.0)
    assert growth.grown


def test_the_weights_part_of_a_build_is_paid_once() -> None:
    growth = Growth(blocks=9, saving=0.2)
    growth.built(2.0, weight_bytes=32 << 20)
    weights = WEIGHT_S_PER_MIB * 32
    assert growth.blocked_build_s == pytest.approx(weights + (2.0 - weights) * 9)
    growth.built(0.5, weight_bytes=1 << 30)  # more weights than the build took: all of it is the weights'
    assert growth.blocked_build_s == pytest.approx(0.5)


def test_no_saving_never_grows() -> None:
    growth = Growth(blocks=4, saving=0.0)
    growth.built(0.1, weight_bytes=0)
    growth.ran(1e6)
    assert not growth.grown


def _model() -> torch.nn.Module:
    return vgg_like()  # a tail shared by the blocks, as in vgg16


def _engines(explainer: hyinf.Explainer) -> list:
    """The ORT engines that built or read a session (the blocked one is made first, to look in the cache)."""
    return [engine for _, engine in explainer._ort.kept.entries.values() if engine.sessions]


def _growth(explainer: hyinf.Explainer) -> Growth:
    (growth,) = [g for _, g in explainer._growth.kept.entries.values()]
    return growth


@pytest.mark.parametrize("mode", ["hybrid", "incremental"])
def test_one_block_first_then_the_blocked_graph_then_read_back(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYINF_CACHE_DIR", str(tmp_path))
    model = _model()
    images = [torch.rand(3, SIZE, SIZE) for _ in range(3)]
    naive = [hyinf.explain(model, image, patch=PATCH, stride=STRIDE, mode="naive") for image in images]
    explainer = hyinf.Explainer(model, patch=PATCH, stride=STRIDE, mode=mode, backend="ort")

    first = explainer.explain(images[0])
    (single,) = _engines(explainer)
    assert len(single.blocked.engines) == 1 and "one block of positions" in first.mode
    growth = _growth(explainer)
    assert growth.blocks > 1 and 0 < growth.saving < 1 and growth.build_s is not None and growth.build_s > 0
    assert growth.lost_s == pytest.approx(first.timings["positions_s"] * growth.saving, rel=0.5)
    assert_close_to(naive[0].scores, first.scores, f"{mode}, one block")

    growth.lost_s = growth.blocked_build_s  # as after enough images
    second = explainer.explain(images[1])
    (blocked,) = [e for e in _engines(explainer) if e is not single]
    assert len(blocked.blocked.engines) == growth.blocks and "one block" not in second.mode
    assert_close_to(naive[1].scores, second.scores, f"{mode}, blocked")

    fresh = hyinf.Explainer(model, patch=PATCH, stride=STRIDE, mode=mode, backend="ort")  # a new process, the cache warm
    third = fresh.explain(images[2])
    (read,) = _engines(fresh)
    assert len(read.blocked.engines) == growth.blocks and [s.cached for s in read.sessions.values()] == [True]
    assert not fresh._growth.kept.entries and "one block" not in third.mode
    assert_close_to(naive[2].scores, third.scores, f"{mode}, read back")


def test_a_cached_one_block_graph_keeps_its_build_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process reading the one-block graph back weighs the build it would repeat, not the read."""
    monkeypatch.setenv("HYINF_CACHE_DIR", str(tmp_path))
    model, image = _model(), torch.rand(3, SIZE, SIZE)
    built = hyinf.Explainer(model, patch=PATCH, stride=STRIDE, backend="ort")
    built.explain(image)
    again = hyinf.Explainer(model, patch=PATCH, stride=STRIDE, backend="ort")
    again.explain(image)
    (session,) = [s for e in _engines(again) for s in e.sessions.values()]
    assert session.cached and _growth(again).build_s == pytest.approx(_growth(built).build_s)


def test_a_given_plan_runs_its_own_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYINF_CACHE_DIR", str(tmp_path))
    model, image = _model(), torch.rand(3, SIZE, SIZE)
    explainer = hyinf.Explainer(model, patch=PATCH, stride=STRIDE, backend="ort", plan=Plan.uniform("incremental"))
    result = explainer.explain(image)
    (engine,) = _engines(explainer)
    assert len(engine.blocked.engines) > 1 and not explainer._growth.kept.entries and "one block" not in result.mode
