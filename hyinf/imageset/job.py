"""A job: every image of a set explained with one model and settings, in this process or on Ray, each
image's results in its own folder, one index of them all, and the summaries."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hyinf.errors import HyinfError
from hyinf.imageset.index import (
    INDEX,
    RUN_FILE,
    Index,
    Row,
    check_run,
    completed,
    run_digest,
)
from hyinf.imageset.inputs import Item
from hyinf.imageset.summary import (
    CLASS_MEANS,
    CONTACT_SHEET,
    class_means,
    contact_sheet,
)
from hyinf.imageset.worker import JobSpec, Worker, file_sha256

#: Names of the job's own outputs, which no image's results folder may take.
RESERVED = (INDEX, INDEX + ".new", RUN_FILE, RUN_FILE + ".new", CLASS_MEANS, CONTACT_SHEET)
#: Images read and explained together in this process (explain_batch groups them further by size).
GROUP = 16


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: `address` None starts a local cluster for the job; else "auto", "ray://host:port" or "host:port"."""

    address: str | None = None
    workers: int = 2
    threads: int = 1


@dataclass
class JobResult:
    rows: list[Row]
    resumed: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status != "ok"]


def model_sha256(spec: JobSpec) -> str | None:
    """The digest of the files that hold the model's weights (None for the demo and seeded torchvision models)."""
    source = spec.weights or (None if spec.model == "demo" or spec.model.startswith("torchvision:") else spec.model)
    return file_sha256(Path(source)) if source else None


def explain_images(spec: JobSpec, items: Sequence[Item], out: Path, *, targets: dict[str, int] | None = None, resume: bool = False,
                   ray: RayOptions | None = None, contact: int = 16, progress: bool = False,
                   note: Callable[[str], None] = lambda line: None) -> JobResult:
    """Explain `items` into `out` (one folder per item name, index.csv, class_means/, contact_sheet.png).

    An image that fails is recorded in the index and the rest go on; `resume` keeps the results of
    images already explained from the same bytes with the same settings and target. `note` receives
    one line per thing worth telling (a failure, a duplicate).
    """
    start = time.perf_counter()
    key = spec.results_key(model_sha256(spec))
    run = run_digest(key)
    with contextlib.ExitStack() as stack:
        if ray is None:
            worker = Worker(spec, run)  # a model that cannot load fails the job before anything is written
            rows = _run_here(worker, out)
        else:
            from hyinf.imageset.ray_pool import RayPool

            pool = stack.enter_context(RayPool(spec, run, ray))  # connected, and the model loaded by every actor
            rows = functools.partial(pool.run, out=out)
        return _job(rows, items, out, key, run, targets or {}, resume, contact, progress, note, start)


def _job(rows: Callable[[list[tuple[Item, int | None]]], Iterator[Row]], items: Sequence[Item], out: Path, key: dict[str, Any],
         run: str, targets: dict[str, int], resume: bool, contact: int, progress: bool, note: Callable[[str], None],
         start: float) -> JobResult:
    check_run(out, key, resume)
    kept: list[Row] = []
    work: list[tuple[Item, int | None]] = []
    for item in items:
        target = targets.get(item.name)
        done = None
        if resume:
            try:
                done = completed(out / item.name, file_sha256(item.path), run, target)
            except (OSError, HyinfError):
                done = None  # unreadable now: it is tried, and its failure recorded
        if done is not None:
            kept.append(done)
        else:
            work.append((item, target))
    index = Index(out, kept)
    with tqdm(total=len(items), initial=len(kept), unit="img", desc="images", disable=not progress) as bar:
        for row in rows(work):
            index.add(row)
            bar.update()
            if row.status != "ok":
                note(f"{row.image}: {row.error}")
    rows_all = index.close()
    result = JobResult(rows_all, len(kept), time.perf_counter() - start)
    unreadable = [r for r in rows_all if r.status == "ok" and not (out / r.image / "report.json").is_file()]
    if unreadable:  # Ray workers on other machines wrote where this one cannot see
        result.notes.append(f"the results of {len(unreadable)} images are not under {out} on this machine: "
                            "with Ray, --out must be a folder every worker and this machine share")
        return result
    first: dict[str, str] = {}
    for row in rows_all:
        if not row.sha256:
            continue
        if row.sha256 in first:
            result.notes.append(f"{row.image} has the same content as {first[row.sha256]}")
        else:
            first[row.sha256] = row.image
    class_means(out, rows_all)
    if contact > 0:
        contact_sheet(out, rows_all, contact)
    for line in result.notes:
        note(line)
    return result


def _run_here(worker: Worker, out: Path) -> Callable[[list[tuple[Item, int | None]]], Iterator[Row]]:
    def rows(work: list[tuple[Item, int | None]]) -> Iterator[Row]:
        for start in range(0, len(work), GROUP):
            yield from worker.run_items(work[start : start + GROUP], out)

    return rows
