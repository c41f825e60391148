"""`backend="auto"`: which backend explains the images of one size, counting what ORT has to build.

The cost models predict each backend's seconds for one image's positions (`choose_backend`). ORT also
builds its graphs before its first positions: seconds in a first process (export and graph
optimisation), less where the disk cache holds them (its weights are still copied in and pre-packed),
nothing once this process built them. Torch only traces, as ORT does too. So where ORT is predicted
faster, auto runs it once what it saves pays for what it has left to build: at once where the images of
this call alone pay, else once the images torch ran meanwhile would have (a rent-or-buy rule, as
`hyinf.runtime.ort_growth` applies to ORT's blocks of positions): whatever the number of images, the
extra cost over the better choice in hindsight is at most one predicted build. What ORT would have
saved is kept in the disk cache per model structure and settings, so a user explaining one image per
process also switches once the processes together would have repaid the build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hyinf.planner.select import BackendChoice
from hyinf.runtime.disk_cache import DiskCache

KIND = "auto"  # the disk cache's folder for what ORT would have saved


@dataclass(frozen=True)
class StoredSaving:
    """What ORT would have saved on the images torch ran for one model structure and settings, kept in
    the disk cache (`key`) across processes."""

    cache: DiskCache | None
    key: str

    def load(self) -> float:
        found = self.cache.get(KIND, self.key) if self.cache is not None else None
        value = found[1].get("saved_s") if found is not None else None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        return float(value) if ok else 0.0  # type: ignore[arg-type]

    def store(self, seconds: float) -> None:
        if self.cache is not None:
            self.cache.discard(KIND, self.key)  # entries are written once: replaced, not rewritten
            self.cache.put(KIND, self.key, {}, {"saved_s": seconds})


@dataclass(frozen=True)
class OrtOutlook:
    """What ORT has left to pay before its positions for images of one size, predicted."""

    build_s: float  # building its graphs (or reading them from the disk cache and opening them); 0 once built
    factor: float  # its positions' seconds over the plan's (above 1 while it runs one block of positions)
    what: str  # for reports: "build its graphs", "open its cached graphs", ...


@dataclass
class AutoBackend:
    """The choice between the backends for images of one size, over the calls of an Explainer."""

    choice: BackendChoice
    saved_s: float = 0.0  # what ORT would have saved on the images torch ran while its build had not paid
    stored: StoredSaving | None = None  # where `saved_s` is kept across processes

    def pick(self, images: int, outlook: OrtOutlook | None) -> tuple[str, str]:
        """The backend for the next `images` images, and why. `outlook`: ORT's, where it is predicted faster.
        A call that runs torch although ORT is predicted faster adds what ORT would have saved."""
        choice = self.choice
        if choice.backend != "ort" or outlook is None or outlook.build_s <= 0:
            return choice.backend, choice.reason
        torch_s, ort_s = choice.predicted_s["torch"], choice.predicted_s["ort"] * outlook.factor
        saving = torch_s - ort_s
        if saving <= 0:
            return "torch", (f"torch: ORT's first graph (one block of positions) is predicted {ort_s:.2f} s an image, "
                             f"no faster than torch's {torch_s:.2f} s, and it would first {outlook.what} "
                             f"(predicted {outlook.build_s:.1f} s)")
        if self.saved_s + images * saving >= outlook.build_s:
            these = "this image" if images == 1 else f"these {images} images"
            return "ort", (f"{choice.reason}; its saving of {saving:.2f} s an image pays for what it has to "
                           f"{outlook.what} (predicted {outlook.build_s:.1f} s) over {these}"
                           f"{' and the earlier ones' if self.saved_s else ''}")
        self.saved_s += images * saving
        if self.stored is not None:
            self.stored.store(self.saved_s)
        left = math.ceil(max(outlook.build_s - self.saved_s, 0.0) / saving)
        return "torch", (f"torch until ORT pays for itself: ORT is predicted {saving:.2f} s an image faster "
                         f"({ort_s:.2f} s against {torch_s:.2f} s) but would first {outlook.what} (predicted "
                         f"{outlook.build_s:.1f} s), which about {left} more image{'s' if left != 1 else ''} of this size would repay")
