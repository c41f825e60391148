"""A job's records on disk: `index.csv` (one row per image), `hyinf-run.json` (the settings its results
depend on) and the test that an image's results are complete, which `--resume` relies on."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hyinf.canonical import digest
from hyinf.errors import SettingsError

COLUMNS = ("image", "status", "target", "label", "base_score", "seconds", "error")
INDEX, RUN_FILE = "index.csv", "hyinf-run.json"
RESULT_FILES = ("heatmap.npy", "attribution.npy", "overlay.png", "report.json")  # report.json is written last


@dataclass(frozen=True)
class Row:
    """One image's line of index.csv; `sha256` (of the image file) stays out of it."""

    image: str
    status: str  # ok | failed
    target: int | None = None
    label: str = ""
    base_score: float | None = None
    seconds: float = 0.0
    error: str = ""
    sha256: str = ""

    def cells(self) -> dict[str, Any]:
        cells = {k: v for k, v in asdict(self).items() if k in COLUMNS}
        cells["seconds"] = f"{self.seconds:.3f}"
        return {k: "" if v is None else v for k, v in cells.items()}


class Index:
    """index.csv, appended as images finish (so a killed job leaves the rows it finished) and rewritten
    in image order when the job ends."""

    def __init__(self, out: Path, rows: list[Row]) -> None:
        self.path, self.rows = out / INDEX, list(rows)
        self._file = self.path.open("w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, COLUMNS)
        self._writer.writeheader()
        for row in self.rows:
            self._writer.writerow(row.cells())
        self._file.flush()

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self._writer.writerow(row.cells())
        self._file.flush()

    def close(self) -> list[Row]:
        self._file.close()
        self.rows.sort(key=lambda r: r.image)
        partial = self.path.with_name(INDEX + ".new")
        with partial.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(row.cells() for row in self.rows)
        os.replace(partial, self.path)
        return self.rows


def check_run(out: Path, settings: dict[str, Any], resume: bool) -> None:
    """Refuse an output folder holding results made with other settings; record these settings.

    Results made with the same settings are redone, or kept with `resume`.
    """
    path = out / RUN_FILE
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if not isinstance(before, dict):
            raise SettingsError(f"{path} is not a hyinf run record; give another --out")
        differ = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
        if differ:
            shown = "; ".join(f"{k}: {before.get(k)!r} before, {settings.get(k)!r} now" for k in differ[:3])
            raise SettingsError(f"{out} holds results made with other settings ({shown}); give another --out, "
                                "or the same settings to add to it")
    elif resume and out.exists() and any(out.iterdir()):
        raise SettingsError(f"--resume: {out} holds no {RUN_FILE}, so its results cannot be matched to these settings; "
                            "give another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(settings, indent=2, sort_keys=True))


def run_digest(settings: dict[str, Any]) -> str:
    return digest(settings)


def completed(folder: Path, sha256: str, run: str, target: int | None) -> Row | None:
    """The index row of an image whose results in `folder` are whole and were made from this file's
    bytes with these settings (and this target, where one was asked for); else None."""
    if not all((folder / name).is_file() for name in RESULT_FILES):
        return None
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("image_sha256") != sha256 or report.get("run") != run:
        return None
    if report.get("target_given") != target:
        return None
    return Row(report.get("name", folder.name), "ok", report.get("target"), report.get("target_label", ""),
               report.get("base_score"), float(report.get("timings_s", {}).get("total_s", 0.0)), "", sha256)


def write_atomic(path: Path, text: str) -> None:
    """Written beside and renamed, so a reader never sees half a file."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(text)
    os.replace(partial, path)
