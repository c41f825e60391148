"""What a person looks at after a job: the mean heatmap of each explained class, and a contact sheet
of the most confident images with their overlays. Both are read back from the images' result files,
so a resumed job or one run on Ray summarises every image alike."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hyinf.imageset.index import Row

CLASS_MEANS = "class_means"
CONTACT_SHEET = "contact_sheet.png"
_THUMB = 256


def class_file_name(target: int, label: str) -> str:
    """`207_golden_retriever`: the class index first (labels may repeat), the label made file-safe."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_.")[:60]
    return f"{target}_{safe}" if safe and safe != str(target) else str(target)


def class_means(out: Path, rows: list[Row]) -> list[Path]:
    """`class_means/CLASS.npy` (the mean heatmap of the images explained for that class) and its PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups: dict[tuple[int, str], list[np.ndarray]] = defaultdict(list)
    for row in rows:
        if row.status == "ok" and row.target is not None:
            heatmap = np.load(out / row.image / "heatmap.npy", allow_pickle=False)
            groups[(row.target, row.label)].append(heatmap)
    written = []
    folder = out / CLASS_MEANS
    for (target, label), maps in sorted(groups.items()):
        shapes = {m.shape for m in maps}
        if len(shapes) > 1:  # images of other sizes make other grids: the largest group of one grid is averaged
            common = max(shapes, key=lambda s: sum(m.shape == s for m in maps))
            maps = [m for m in maps if m.shape == common]
        mean = np.mean(maps, axis=0)
        folder.mkdir(exist_ok=True)
        name = class_file_name(target, label)
        np.save(folder / f"{name}.npy", mean)
        limit = float(np.abs(mean).max()) or 1.0
        fig = Figure(figsize=(4.6, 4.0), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        shown = ax.imshow(mean, cmap="coolwarm", vmin=-limit, vmax=limit)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="mean drop in target score")
        ax.set_title(f"class {label}: mean heatmap of {len(maps)} image{'s' * (len(maps) != 1)}", fontsize=9)
        ax.axis("off")
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png")
        written.append(folder / f"{name}.npy")
    return written


def contact_sheet(out: Path, rows: list[Row], count: int) -> Path | None:
    """The `count` images with the highest base scores, their overlays tiled with name, class and score."""
    best = sorted((r for r in rows if r.status == "ok" and r.base_score is not None), key=lambda r: -float(r.base_score))[:count]
    if not best:
        return None
    thumbs = []
    for row in best:
        with Image.open(out / row.image / "overlay.png") as overlay:
            thumb = overlay.convert("RGB")
        thumb.thumbnail((_THUMB, _THUMB))
        thumbs.append(thumb)
    columns, caption, tall = min(4, len(best)), 30, max(t.height for t in thumbs)
    sheet = Image.new("RGB", (columns * _THUMB, -(-len(best) // columns) * (tall + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (row, thumb) in enumerate(zip(best, thumbs, strict=True)):
        x, y = (i % columns) * _THUMB, (i // columns) * (tall + caption)
        sheet.paste(thumb, (x + (_THUMB - thumb.width) // 2, y))
        name = row.image if len(row.image) <= 36 else "..." + row.image[-33:]
        draw.text((x + 4, y + tall + 2), name, fill="black")
        draw.text((x + 4, y + tall + 15), f"{row.label[:26]} ({float(row.base_score):.3g})", fill="black")
    path = out / CONTACT_SHEET
    sheet.save(path)
    return path
