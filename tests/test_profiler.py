"""The profiler: timing statistics, timed runs of the engine, the sweep, and `hyinf profile` end to end."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hyinf.cli import main
from hyinf.graph.geometry import Change, OcclusionGrid, changed_regions
from hyinf.graph.torch_frontend import trace_torch
from hyinf.plans_db import Database
from hyinf.plans_db.schema import CostModelRow
from hyinf.profiler.cost_model import AnalyticCosts, LearnedCosts
from hyinf.profiler.features import choice_nodes
from hyinf.profiler.machine import fingerprint
from hyinf.profiler.measure import measure_program
from hyinf.profiler.profile import device_costs
from hyinf.profiler.sweep import CAPS, POSITIONS, sample_configs
from hyinf.runtime.chunking import largest_chunk
from hyinf.profiler.timing import Stopwatch, Timing

CPU = torch.device("cpu")


def test_timing_statistics() -> None:
    t = Timing((1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median == 3.0
    assert t.iqr == 2.0  # quartiles 2 and 4
    assert t.spread == pytest.approx(2 / 3)
    assert t.noisy
    assert not Timing((1.0, 1.01, 0.99)).noisy
    assert Timing((5.0,)).spread == 0.0


def test_stopwatch_reads_the_injected_clock() -> None:
    ticks = itertools.count(step=0.5)
    watch = Stopwatch(CPU, clock=lambda: next(ticks))
    value, seconds = watch(lambda: "done")
    assert (value, seconds) == ("done", 0.5)


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()


def test_measure_program_times_every_choice_in_both_modes() -> None:
    program = trace_torch(_small_cnn(), (1, 3, 32, 32), CPU)
    grid = OcclusionGrid.make((32, 32), 6, 4)
    samples = measure_program(program, grid, positions=8, repeats=2, source="model", config="small")
    regions = changed_regions(program.graph, grid)
    nodes = {n.name for n in choice_nodes(program.graph, regions)}
    assert {s.config.split("/")[-1] for s in samples} == nodes
    by_kind: dict[str, set[str]] = {}
    for s in samples:
        by_kind.setdefault(s.kind, set()).add(s.config.split("/")[-1])
        assert len(s.timing.times) == 2 and all(t > 0 for t in s.timing.times)
        assert s.features["positions"] == 8
    assert by_kind["incremental"] == by_kind["full"] == nodes
    local = {n for n in nodes if regions[n].change is Change.LOCAL}
    assert by_kind["to_full"] == by_kind["to_win"] == local
    conv = next(s for s in samples if s.kind == "incremental" and s.op == "conv/conv" and s.config.endswith("/_0"))
    region = regions["_0"]
    assert conv.features["out_area"] == region.window_area
    assert conv.features["flops"] == 2 * 27 * 8 * region.window_area * 8  # 2 * MACs/element * channels * pixels * positions
    full = next(s for s in samples if s.kind == "full" and s.config.endswith("/_0"))
    assert full.features["out_area"] == 32 * 32


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_sweep_configurations_are_deterministic_and_bounded_at_the_devices_chunk_sizes(kind: str) -> None:
    configs = sample_configs(200, seed=3, device_kind=kind)
    assert configs == sample_configs(200, seed=3, device_kind=kind)
    assert len({c.id for c in configs}) > 150
    max_macs, max_elements = CAPS[kind]
    for c in configs:
        macs, elements = c.work()
        assert macs <= max_macs and elements <= max_elements and 1 <= c.patch <= c.size
    # Every chunk size up to the runtime's largest on that device is measured.
    assert {c.positions for c in configs} == set(POSITIONS[kind]) and max(POSITIONS[kind]) == largest_chunk(kind)


def test_profile_command_end_to_end(tmp_path: Path) -> None:
    url = str(tmp_path / "hyinf.db")
    result = CliRunner().invoke(main, ["profile", "--configs", "10", "--model", "demo", "--patch", "8", "--stride", "8", "--db", url, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output and "learned" in result.output and "analytic" in result.output
    assert "model's layers not fitted to" in result.output
    info = CliRunner().invoke(main, ["db", "info", "--db", url])
    assert info.exit_code == 0 and "1 cost models" in info.output and "schema revision" in info.output
    db = Database(url)
    costs, info = device_costs(db, fingerprint(CPU))
    assert isinstance(costs, LearnedCosts) and info == {"kind": "learned", "id": 1}
    # Profiling again adds measurements and refits from both runs.
    again = CliRunner().invoke(main, ["profile", "--configs", "4", "--db", url, "--quiet"])
    assert again.exit_code == 0, again.output
    assert db.summary().counts["profile runs"] == 2
    newest = db.cost_model_ref(device_key=fingerprint(CPU).key, backend="torch")
    assert newest is not None and db.cost_model(newest.id).run_ids == [1, 2]  # type: ignore[union-attr]
    assert device_costs(db, fingerprint(CPU))[1] == {"kind": "learned", "id": newest.id}


def test_planning_costs_work_without_a_profile(tmp_path: Path) -> None:
    fp = fingerprint(CPU)
    assert isinstance(device_costs(None, fp)[0], AnalyticCosts)
    db = Database(str(tmp_path / "empty.db"))
    assert isinstance(device_costs(db, fp)[0], AnalyticCosts)
    device = db.device_id(fp)
    db.save_cost_model(device, "torch", 1, [], {"features": ["something else"]}, {})
    assert isinstance(device_costs(db, fp)[0], AnalyticCosts)  # made by another version: not used, not a crash
    with db.session() as s:
        assert s.query(CostModelRow).count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["db", "info", "--db", "{tmp}/notes.txt"], "not a SQLite database"),
        pytest.param(["profile", "--device", "cuda", "--db", "{tmp}/x.db"], "cuda",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
        (["profile", "--model", "torchvision:nosuchnet", "--db", "{tmp}/x.db"], "nosuchnet"),
    ],
)
def test_profile_and_db_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "notes.txt").write_text("not a database " * 100)
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
