"""`hyinf explain` over many images: folders, globs, duplicates, broken files, targets, resume, the
index and the summaries; every image's heatmap equal to explaining it alone."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hyinf.demo import SAMPLE, asset
from hyinf.imageset.index import COLUMNS
from service_support import HYINF
from test_cli import assert_one_line_error, invoke


def _images(root: Path, count: int = 4) -> Path:
    """A folder of `count` random images of mixed sizes, a nested copy of the sample twice, a text file
    and a file with an image extension that is not an image."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40 + 12 * i, 50, 3), dtype=np.uint8)).save(root / f"im{i}.png")
    (root / "sub").mkdir()
    shutil.copy(asset(SAMPLE), root / "sub" / "sample.png")
    shutil.copy(asset(SAMPLE), root / "sub" / "again.png")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def _index(out: Path) -> dict[str, dict[str, str]]:
    with (out / "index.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return {row["image"]: row for row in reader}


def test_a_folder_job_writes_each_image_an_index_and_summaries(tmp_path) -> None:
    images, out = _images(tmp_path / "imgs"), tmp_path / "out"
    (tmp_path / "targets.csv").write_text("image,target\nim1.png,2\nsub/sample.png,9\nnowhere.png,1\n")
    result = invoke("explain", "demo", str(images), "--out", str(out), "--targets", str(tmp_path / "targets.csv"))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert [line for line in lines if line.startswith("Error:")] == [f"Error: 2 of 7 images failed; their reasons are in {out / 'index.csv'}"]
    assert "Traceback" not in result.output
    assert any("skipped 1 files that are not images" in line for line in lines)
    assert any("1 rows name no image of this job (nowhere.png)" in line for line in lines)
    assert any("sub/sample.png has the same content as sub/again.png" in line for line in lines)
    index = _index(out)
    assert sorted(index) == ["broken.jpg", "im0.png", "im1.png", "im2.png", "im3.png", "sub/again.png", "sub/sample.png"]
    assert index["broken.jpg"]["status"] == "failed" and "not an image Pillow can read" in index["broken.jpg"]["error"]
    assert index["sub/sample.png"]["status"] == "failed" and "target 9 is outside" in index["sub/sample.png"]["error"]
    assert index["im1.png"]["target"] == "2" and index["im1.png"]["label"] == "triangle"
    assert index["sub/again.png"]["label"] == "triangle"  # the sample shows a triangle
    for name, row in index.items():
        if row["status"] == "ok":
            assert sorted(p.name for p in (out / name).iterdir()) == ["attribution.npy", "heatmap.npy", "overlay.png", "report.json"]
            report = json.loads((out / name / "report.json").read_text())
            assert report["target"] == int(row["target"]) and report["base_score"] == pytest.approx(float(row["base_score"]))
    # Each heatmap is the one a run on that image alone computes (a mixed-size image was resized alike).
    for name in ("im3.png", "sub/again.png"):
        alone = tmp_path / f"alone-{name.replace('/', '-')}"
        target = ["--target", "2"] if name == "im1.png" else []
        assert invoke("explain", "demo", str(images / name), "--out", str(alone), "--quiet", *target).exit_code == 0
        np.testing.assert_allclose(np.load(out / name / "heatmap.npy"), np.load(alone / "heatmap.npy"), rtol=1e-4, atol=1e-5)
    means = sorted(p.name for p in (out / "class_means").iterdir())
    predicted = {(row["target"], row["label"]) for row in index.values() if row["status"] == "ok"}
    assert means == sorted(f"{t}_{label}.{ext}" for t, label in predicted for ext in ("npy", "png"))
    triangles = [np.load(out / n / "heatmap.npy") for n, r in index.items() if r["status"] == "ok" and r["label"] == "triangle"]
    np.testing.assert_allclose(np.load(out / "class_means" / "2_triangle.npy"), np.mean(triangles, axis=0), rtol=1e-6)
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width == 4 * 256 and sheet.height > 256  # five images: two rows of four columns


def test_resume_keeps_whole_results_and_redoes_the_rest(tmp_path) -> None:
    images, out = _images(tmp_path / "imgs", count=3), tmp_path / "out"
    (images / "broken.jpg").unlink()
    assert invoke("explain", "demo", str(images), "--out", str(out), "--quiet").exit_code == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("**/report.json")}
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(images / "im0.png")  # new bytes
    (out / "im1.png" / "overlay.png").unlink()  # results no longer whole
    result = invoke("explain", "demo", str(images), "--out", str(out), "--resume")
    assert result.exit_code == 0 and "5 images, 5 explained, 0 failed, 3 kept from before" in result.output
    redone = {p.parent.name for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert redone == {"im0.png", "im1.png"}
    assert len(_index(out)) == 5
    # Other settings into the same folder are refused, with or without --resume; a folder of other files too.
    for extra in ([], ["--resume"]):
        assert_one_line_error(invoke("explain", "demo", str(images), "--out", str(out), "--stride", "4", *extra),
                              "holds results made with other settings", "stride")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    assert_one_line_error(invoke("explain", "demo", str(images), "--out", str(tmp_path / "other"), "--resume"),
                          "holds no hyinf-run.json")


def test_globs_and_several_arguments_name_results_after_what_was_given(tmp_path) -> None:
    images = _images(tmp_path / "imgs", count=2)
    out = tmp_path / "out"
    result = invoke("explain", "demo", str(images / "**" / "*.png"), str(images / "im0.png"), "--out", str(out), "--quiet",
                    "--contact-sheet", "0")
    assert result.exit_code == 0, result.output
    assert sorted(_index(out)) == ["im0.png", "im1.png", "sub/again.png", "sub/sample.png"]  # im0.png given twice: once
    assert not (out / "contact_sheet.png").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["{imgs}/nothing-*.png"], ["no images to explain"]),
    (["{imgs}", "--targets", "{tmp}/bad.csv"], ["must be a CSV with the header image,target"]),
    (["{imgs}", "--targets", "{tmp}/word.csv"], ["line 2: target 'cat' is not a class index"]),
    (["{imgs}", "--targets", "{tmp}/word.csv", "--target", "1"], ["--target", "--targets", "not both"]),
    (["{imgs}", "--ray", "127.0.0.1:1"], ["cannot reach the Ray cluster at 127.0.0.1:1"]),
    (["{imgs}", "--ray", "http://example"], ["is not auto, ray://HOST:PORT or HOST:PORT"]),
])
def test_bad_jobs_are_one_line_before_any_image(tmp_path, args, words) -> None:
    images = _images(tmp_path / "imgs", count=1)
    (tmp_path / "bad.csv").write_text("file,class\na.png,1\n")
    (tmp_path / "word.csv").write_text("image,target\nim0.png,cat\n")
    out = tmp_path / "out"
    result = invoke("explain", "demo", *[a.format(imgs=images, tmp=tmp_path) for a in args], "--out", str(out))
    assert_one_line_error(result, *words)
    assert not (out / "im0.png").exists()


def test_a_job_killed_midway_resumes_where_it_stopped(tmp_path) -> None:
    """SIGKILL while images are being written: the index keeps the rows finished, no report is half
    written, and --resume explains only what is missing."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(48):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    out = tmp_path / "out"
    command = [HYINF, "explain", "demo", str(root), "--out", str(out), "--quiet", "--stride", "4"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*/report.json"))) < 20:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    done = list(out.glob("*/report.json"))
    assert 20 <= len(done) < 48, "the job finished before it was killed: the test proves nothing"
    stamps = {report: report.stat().st_mtime_ns for report in done}
    for report in done:
        json.loads(report.read_text())  # whole
    rows = _index(out)
    assert 0 < len(rows) <= len(done)
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert all(report.stat().st_mtime_ns == stamp for report, stamp in stamps.items())  # kept, not redone
    assert len(_index(out)) == 48 and all(row["status"] == "ok" for row in _index(out).values())


def test_a_pipe_among_the_images_fails_alone_without_blocking(tmp_path) -> None:
    """A FIFO named with an image extension would block a reader forever: it is refused, not opened."""
    images = _images(tmp_path / "imgs", count=1)
    fifo = tmp_path / "stream.png"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    result = invoke("explain", "demo", str(images / "im0.png"), str(fifo), "--out", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output
    index = _index(out)
    assert index["im0.png"]["status"] == "ok"
    assert index["stream.png"]["status"] == "failed" and "not a regular file" in index["stream.png"]["error"]
