"""The disk cache keeps ORT's graphs across processes: entries are checked on read, damaged or foreign
ones are never trusted, the folder stays within its cap, and an unusable folder never fails a run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_close_to, seeded
from torch import nn

import hyinf
from hyinf.errors import ModelError
from hyinf.runtime.onnx_export import weight_fingerprint
from hyinf.runtime.ort_backend import _stored_weights
from hyinf.runtime.disk_cache import (
    MANIFEST,
    STALE_S,
    CacheWarning,
    DiskCache,
    content_key,
)


def test_entries_round_trip_and_damage_is_a_miss(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20)
    assert cache.get("ort", "k") is None
    cache.put("ort", "k", {"a.onnx": b"graph", "b.onnx": b"tail"}, {"keys": [["image"]]})
    assert cache.get("ort", "k") == ({"a.onnx": b"graph", "b.onnx": b"tail"}, {"keys": [["image"]]})
    (tmp_path / "ort" / "k" / "a.onnx").write_bytes(b"grapH")
    with pytest.warns(CacheWarning, match="damaged"):
        assert cache.get("ort", "k") is None
    assert not (tmp_path / "ort" / "k").exists()  # rebuilt next time, not read again
    cache.put("ort", "k", {"a.onnx": b"graph"}, {})
    (tmp_path / "ort" / "k" / MANIFEST).write_text("{not json")
    assert cache.get("ort", "k") is None


def test_the_cap_removes_the_entries_used_longest_ago(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 3500)
    for n, key in enumerate(("old", "used", "new")):
        cache.put("ort", key, {"g": bytes(1000)}, {})
        os.utime(tmp_path / "ort" / key / MANIFEST, (1000 + n, 1000 + n))
    cache.get("ort", "old")  # used now: kept
    cache.put("ort", "newest", {"g": bytes(1000)}, {})
    assert sorted(p.name for p in (tmp_path / "ort").iterdir()) == ["new", "newest", "old"]
    cache.put("ort", "huge", {"g": bytes(5000)}, {})  # over the whole cap: never stored
    assert cache.get("ort", "huge") is None


def test_entries_left_half_written_are_removed_once_stale(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20)
    fresh, stale = tmp_path / "ort" / ".new-a", tmp_path / "ort" / ".new-b"
    for folder in (fresh, stale):
        folder.mkdir(parents=True)
        (folder / "g").write_bytes(b"x")
    os.utime(stale, (time.time() - STALE_S - 10,) * 2)
    cache.put("ort", "k", {"g": b"y"}, {})
    assert fresh.exists() and not stale.exists()


def test_an_unwritable_folder_costs_a_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(CacheWarning, match="cannot write the cache"):
        DiskCache(blocker / "cache", 1 << 20).put("ort", "k", {"g": b"x"}, {})


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HYINF_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HYINF_CACHE_MB", "0")
    assert DiskCache.default() is None
    monkeypatch.setenv("HYINF_CACHE_MB", "1.5")
    cache = DiskCache.default()
    assert cache is not None and cache.folder == tmp_path and cache.limit == int(1.5 * 2**20)
    monkeypatch.setenv("HYINF_CACHE_MB", "lots")
    with pytest.warns(CacheWarning, match="not a number"):
        assert DiskCache.default() is not None
    monkeypatch.delenv("HYINF_CACHE_DIR")
    monkeypatch.delenv("HYINF_CACHE_MB")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert DiskCache.default().folder == tmp_path / "xdg" / "hyinf"  # type: ignore[union-attr]


def test_keys_tell_parts_apart() -> None:
    assert content_key("a", [1, 2]) != content_key("a", [1, 3]) != content_key("a", [1, 2], b"")
    assert content_key("a", b"\x00") != content_key("a", b"\x01")


def _net(seed: int) -> nn.Module:
    seeded(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def _sessions(explainer: hyinf.Explainer) -> list:
    return [s for _, engine in explainer._ort.kept.entries.values() for s in engine.sessions.values()]


def _ort(model: nn.Module) -> hyinf.Explainer:
    """An Explainer on ORT: a new one holds no sessions, as a new process would start."""
    return hyinf.Explainer(model, backend="ort", patch=8, stride=4)


def test_a_new_engine_reads_the_graphs_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYINF_CACHE_DIR", str(tmp_path))
    model, image = _net(0), torch.rand(3, 32, 32)
    naive = hyinf.explain(model, image, mode="naive", patch=8, stride=4)
    first_explainer = _ort(model)
    first = first_explainer.explain(image)
    assert [s.cached for s in _sessions(first_explainer)] == [False] and len(list((tmp_path / "ort").iterdir())) == 1
    second_explainer = _ort(model)
    second = second_explainer.explain(image)
    assert [s.cached for s in _sessions(second_explainer)] == [True]
    assert_close_to(naive.scores, first.scores, "built")
    assert_close_to(naive.scores, second.scores, "read back")
    model[0].weight.data.mul_(2)  # other weights: another entry
    changed = _ort(model)
    changed.explain(image)
    assert [s.cached for s in _sessions(changed)] == [False] and len(list((tmp_path / "ort").iterdir())) == 2


def test_an_entry_of_another_model_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder someone filled with another model's graphs under this model's key fails loudly."""
    monkeypatch.setenv("HYINF_CACHE_DIR", str(tmp_path))
    image = torch.rand(3, 32, 32)
    hyinf.explain(_net(0), image, backend="ort", patch=8, stride=4)
    (first,) = list((tmp_path / "ort").iterdir())
    hyinf.explain(_net(1), image, backend="ort", patch=8, stride=4)
    (second,) = [p for p in (tmp_path / "ort").iterdir() if p != first]
    shutil.rmtree(second)
    shutil.copytree(first, second)
    with pytest.raises(ModelError, match="disagrees with PyTorch"):
        hyinf.explain(_net(1), image, backend="ort", patch=8, stride=4)


def test_a_second_process_starts_warm(tmp_path: Path) -> None:
    """Two `hyinf explain --backend ort` processes: the second reads the first one's graphs."""
    env = {**os.environ, "HYINF_CACHE_DIR": str(tmp_path / "cache"), "HYINF_DB": str(tmp_path / "plans.db")}
    command = [str(Path(sys.executable).parent / "hyinf"), "explain", "demo", "--backend", "ort", "--patch", "32", "--stride", "16", "--quiet"]
    for run in ("a", "b"):
        done = subprocess.run([*command, "--out", str(tmp_path / run)], env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        if run == "a":
            (entry,) = list((tmp_path / "cache" / "ort").iterdir())
            built = (entry / MANIFEST).stat().st_mtime_ns
            os.utime(entry / MANIFEST, ns=(built - 10**9, built - 10**9))
    assert (entry / MANIFEST).stat().st_mtime_ns > built - 10**9  # read (and marked used) by the second process
    assert (tmp_path / "a" / "heatmap.npy").read_bytes() == (tmp_path / "b" / "heatmap.npy").read_bytes()


def test_entries_hold_graphs_not_weights_and_other_weights_are_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights reach ORT from the model, not the cache; an entry naming other weights (another
    hyinf's order, an edited manifest) is rebuilt, never run with the wrong ones."""
    monkeypatch.setenv("HYINF_CACHE_DIR", str(tmp_path))
    seeded(2)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5)).eval()
    image = torch.rand(3, 32, 32)
    naive = hyinf.explain(model, image, mode="naive", patch=8, stride=4)
    _ort(model).explain(image)
    (entry,) = list((tmp_path / "ort").iterdir())
    weight = model[2].weight.detach().numpy().tobytes()
    assert all(weight[:4096] not in f.read_bytes() for f in entry.iterdir())
    manifest = json.loads((entry / MANIFEST).read_text())
    assert manifest["meta"]["weights"]["chunk.onnx"]
    manifest["meta"]["weights"]["chunk.onnx"][0][1] = "0" * 24
    (entry / MANIFEST).write_text(json.dumps(manifest))
    again = _ort(model)
    result = again.explain(image)
    assert [s.cached for s in _sessions(again)] == [False]
    assert_close_to(naive.scores, result.scores, "rebuilt")
    third = _ort(model)
    third.explain(image)
    assert [s.cached for s in _sessions(third)] == [True]  # the rebuilt entry replaced the unfit one


@pytest.mark.parametrize("stored", [None, "weights", {"chunk.onnx": []}, {"chunk.onnx": "0", "tail.onnx": []},
                                    {"chunk.onnx": [[5, "x"]], "tail.onnx": []}, {"chunk.onnx": [[-1, "x"]], "tail.onnx": []},
                                    {"chunk.onnx": [["0", "x"]], "tail.onnx": []}, {"chunk.onnx": [[0]], "tail.onnx": []},
                                    {"chunk.onnx": [[0, "not the fingerprint"]], "tail.onnx": []}],
                         ids=["none", "text", "a part missing", "not a list", "out of range", "negative", "text index", "short",
                              "other weight"])
def test_weight_lists_that_do_not_fit_are_refused(stored: object) -> None:
    weights = {"chunk.onnx": [torch.ones(64, 64)], "tail.onnx": []}
    assert _stored_weights({"weights": stored}, weights) is None
    good = {"chunk.onnx": [[0, weight_fingerprint(weights["chunk.onnx"][0])]], "tail.onnx": []}
    assert _stored_weights({"weights": good}, weights) == {"chunk.onnx": [0], "tail.onnx": []}
