"""The images a job explains, from the files, folders and globs given on the command line."""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hyinf.errors import InputError

#: Files taken from folders and globs, by extension (case-insensitive); a file named directly is always tried.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"})


@dataclass(frozen=True)
class Item:
    """One image: its file, and the folder of its results, relative to the output folder."""

    path: Path
    name: str


@dataclass
class Inputs:
    items: list[Item]
    notes: list[str] = field(default_factory=list)  # one line each: missing paths, non-images skipped, repeats


def is_glob(arg: str) -> bool:
    """A pattern, not the name of an existing file."""
    return glob.has_magic(arg) and not os.path.exists(arg)


def _found(arg: str, notes: list[str]) -> Iterable[tuple[Path, str]]:
    """(file, name relative to what was given) for one argument."""
    if is_glob(arg):
        parts = Path(arg).parts
        fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        base = Path(*parts[:fixed]) if fixed else Path()  # names are relative to the folders before the first pattern
        matches = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
        images = [p for p in matches if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            notes.append(f"{arg} matches no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        skipped = len(matches) - len(images)
        if skipped:
            notes.append(f"{arg}: skipped {skipped} files that are not images by their extension")
        return ((p, p.relative_to(base).as_posix()) for p in images)
    path = Path(arg)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink() and not p.exists())
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if len(files) > len(images):
            notes.append(f"{arg}: skipped {len(files) - len(images)} files that are not images by their extension")
        if not images:
            notes.append(f"{arg} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return ((p, p.relative_to(path).as_posix()) for p in images)
    if not path.exists() and not path.is_symlink():
        notes.append(f"{arg} does not exist")
        return ()
    return ((path, path.name),)


def collect(args: Sequence[str | Path], reserved: Iterable[str] = ()) -> Inputs:
    """Every image the arguments name, in order: files as given, folders searched recursively and globs
    expanded (both by image extension). A file reached twice is explained once; two images that would
    share a results folder get `~2`, `~3`... (as does one named like a `reserved` output)."""
    notes: list[str] = []
    seen: dict[str, str] = {}
    taken = set(reserved)
    items = []
    for arg in map(str, args):
        for path, name in _found(arg, notes):
            real = os.path.realpath(path)
            if real in seen:
                notes.append(f"{path} is {seen[real]} again; it is explained once")
                continue
            seen[real] = str(path)
            unique, n = name, 1
            while unique in taken or unique.split("/")[0] in reserved:
                n += 1
                unique = f"{name}~{n}"
            taken.add(unique)
            items.append(Item(path, unique))
    return Inputs(items, notes)


def read_targets(path: Path, items: Sequence[Item]) -> tuple[dict[str, int], list[str]]:
    """The `image,target` CSV as a target per item name, and a line for each row naming no image.

    An image is named by its results folder's name (the `image` column of index.csv) or its path as given.
    """
    by_key = {**{str(item.path): item.name for item in items}, **{item.name: item.name for item in items}}
    targets: dict[str, int] = {}
    unknown: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"image", "target"} <= set(reader.fieldnames):
                raise InputError(f"{path} must be a CSV with the header image,target (found {reader.fieldnames})")
            for line, row in enumerate(reader, start=2):
                image, value = (row.get("image") or "").strip(), (row.get("target") or "").strip()
                try:
                    target = int(value)
                except ValueError:
                    raise InputError(f"{path} line {line}: target {value!r} is not a class index (an integer)") from None
                if target < 0:
                    raise InputError(f"{path} line {line}: target {target} is negative; classes are numbered from 0")
                if image not in by_key:
                    unknown.append(image)
                    continue
                targets[by_key[image]] = target
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text CSV") from None
    except csv.Error as e:
        raise InputError(f"{path} is not a readable CSV: {e}") from None
    notes = []
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        notes.append(f"{path}: {len(unknown)} rows name no image of this job ({shown})")
    return targets, notes
