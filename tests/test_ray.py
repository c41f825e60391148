"""Image sets on a real local Ray cluster: the same results as in one process, actors that load the
model once, a dead actor replaced and its task retried once, then recorded."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from hyinf.errors import HyinfError
from hyinf.imageset.inputs import Item
from hyinf.imageset.job import RayOptions
from hyinf.imageset.ray_pool import OBJECT_STORE_BYTES, RayPool
from hyinf.imageset.worker import JobSpec
from service_support import HYINF
from test_imageset import _images, _index

#: Slow enough per image (about 2 s on one thread) that an actor can be killed while it works.
SLOW = JobSpec("demo", image_size=(160, 160), settings={"patch": 4, "stride": 1})


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=OBJECT_STORE_BYTES,
             logging_level="ERROR")
    yield
    ray.shutdown()


def _pictures(root: Path, count: int) -> list[tuple[Item, int | None]]:
    root.mkdir()
    rng = np.random.default_rng(3)
    work = []
    for i in range(count):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)).save(path)
        work.append((Item(path, path.name), None))
    return work


def _killer(pool: RayPool, kills: int, after: float) -> threading.Thread:
    """Kills the pool's actor `after` seconds into each of its first `kills` lives."""

    def run() -> None:
        killed: list[object] = []
        while len(killed) < kills:
            actor = pool.actors[0]
            if any(actor is k for k in killed):
                time.sleep(0.05)
                continue
            time.sleep(after)
            ray.kill(actor, no_restart=True)
            killed.append(actor)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_job_on_a_fresh_local_cluster_equals_the_one_in_process(tmp_path) -> None:
    images = _images(tmp_path / "imgs", count=3)
    here, there = tmp_path / "here", tmp_path / "there"
    base = [HYINF, "explain", "demo", str(images), "--quiet"]
    assert subprocess.run([*base, "--out", str(here)], capture_output=True, timeout=300).returncode == 1  # broken.jpg
    run = subprocess.run([*base, "--out", str(there), "--ray", "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    rows_here, rows_there = _index(here), _index(there)
    assert rows_here.keys() == rows_there.keys()
    for name, row in rows_here.items():
        same = ("image", "status", "target", "label", "error")  # base scores to float tolerance: thread counts differ
        assert {k: row[k] for k in same} == {k: rows_there[name][k] for k in same}
        if row["status"] == "ok":
            assert float(rows_there[name]["base_score"]) == pytest.approx(float(row["base_score"]), rel=1e-5)
            scale = abs(float(row["base_score"]))  # the project's tolerance: 1e-4 of the score scale
            np.testing.assert_allclose(np.load(there / name / "heatmap.npy"), np.load(here / name / "heatmap.npy"), rtol=0, atol=1e-4 * scale)
    for name in ("class_means/2_triangle.npy", "contact_sheet.png"):
        assert (there / name).is_file()


def test_a_dead_actor_is_replaced_and_its_tasks_retried(tmp_path, cluster) -> None:
    work = _pictures(tmp_path / "imgs", 3)
    (tmp_path / "out").mkdir()
    with RayPool(SLOW, "run", RayOptions(workers=1, threads=1)) as pool:
        first = pool.actors[0]
        killer = _killer(pool, kills=1, after=1.0)
        rows = list(pool.run(work, tmp_path / "out"))
        killer.join(timeout=5)
    assert pool.actors[0] is not first
    assert sorted(r.image for r in rows) == ["0.png", "1.png", "2.png"] and all(r.status == "ok" for r in rows), rows
    assert all((tmp_path / "out" / r.image / "report.json").is_file() for r in rows)


def test_a_task_that_fails_twice_is_recorded(tmp_path, cluster) -> None:
    work = _pictures(tmp_path / "imgs", 2)
    with RayPool(SLOW, "run", RayOptions(workers=1, threads=1)) as pool:
        killer = _killer(pool, kills=2, after=1.0)
        rows = list(pool.run(work, tmp_path / "out"))
        killer.join(timeout=5)
    assert sorted(r.image for r in rows) == ["0.png", "1.png"]
    assert all(r.status == "failed" and r.error.startswith("failed twice on Ray") for r in rows), rows


def test_a_model_the_actors_cannot_load_is_one_error(cluster) -> None:
    with pytest.raises(HyinfError, match="torchvision has no classification model 'resnet7'"):
        RayPool(JobSpec("torchvision:resnet7"), "run", RayOptions(workers=1))
