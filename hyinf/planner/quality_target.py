"""Approximation as part of the plan: the candidate settings, the choice of the fastest whose predicted
worst image keeps a quality target, and the calibration record a plan document carries.

Pure: the measurements come in (hyinf/calibration.py runs them), the choice and the record go out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hyinf.errors import SettingsError

#: Projective-field thresholds and drill-down ratios searched (exact, 1 and 1, is not a candidate:
#: it is the way when none reaches the target), and coarse strides as multiples of the fine stride.
THRESHOLDS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
RATIOS = (1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1)
COARSE_MULTIPLES = (2, 3)
#: One-sided confidence that a new image keeps at least a candidate's predicted worst quality.
CONFIDENCE = 0.9
#: Calibration needs a spread to predict how far a new image can fall below the ones it saw.
MIN_IMAGES = 2


def check_target(value: object, name: str) -> float:
    """A quality target in (0, 1], else one line saying so."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 < value <= 1:
        raise SettingsError(f"{name} must be in (0, 1] (1 = identical to exact), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Candidate:
    """Approximate settings: `coarse_multiple` is the drill-down's coarse stride over the fine one (unused at ratio 1)."""

    threshold: float
    drill_down: float
    coarse_multiple: int = 2

    def coarse_stride(self, stride: tuple[int, int]) -> tuple[int, int] | None:
        return (stride[0] * self.coarse_multiple, stride[1] * self.coarse_multiple) if self.drill_down < 1 else None

    def describe(self) -> str:
        if self == EXACT:
            return "exact"
        drill = f", drill-down {self.drill_down:g} from {self.coarse_multiple}x the stride" if self.drill_down < 1 else ""
        return f"threshold {self.threshold:g}{drill}"


#: Exact evaluation: not a candidate of the search, but what a calibration keeps when no candidate
#: that meets the target is faster (measured) on the model and machine.
EXACT = Candidate(1.0, 1.0)


def lower_bound(values: Sequence[float]) -> float:
    """The quality a new image is predicted to keep at least: the lower end of a one-sided
    `CONFIDENCE` prediction interval for one more image (Student's t from the images' mean and
    spread), and never above the worst image seen. The worst of a few images alone is optimistic:
    drill-down errors depend on where each image's evidence lies."""
    from scipy.stats import t  # scikit-learn's dependency; imported only by a calibration

    if len(values) < MIN_IMAGES:
        raise SettingsError(f"calibration needs at least {MIN_IMAGES} images to predict a new image's quality, got {len(values)}")
    n = len(values)
    spread = float(t.ppf(CONFIDENCE, n - 1)) * statistics.stdev(values) * math.sqrt(1 + 1 / n)
    return min(min(values), statistics.fmean(values) - spread)


def candidates() -> list[Candidate]:
    found = []
    for threshold in THRESHOLDS:
        for ratio in RATIOS:
            for multiple in COARSE_MULTIPLES if ratio < 1 else (2,):
                if threshold < 1 or ratio < 1:
                    found.append(Candidate(threshold, ratio, multiple))
    return found


@dataclass(frozen=True)
class Trial:
    """A candidate on the calibration images: SSIM and top-region agreement per image, and its time
    (mean seconds per image, predicted from the measured runs it is made of)."""

    candidate: Candidate
    ssim: tuple[float, ...]
    top: tuple[float, ...]
    seconds: float

    @property
    def ssim_bound(self) -> float:
        return lower_bound(self.ssim)

    @property
    def top_bound(self) -> float:
        return lower_bound(self.top)

    def meets(self, target_ssim: float, top_agreement: float | None) -> bool:
        return self.ssim_bound >= target_ssim and (top_agreement is None or self.top_bound >= top_agreement)


def ranked(trials: list[Trial], target_ssim: float, top_agreement: float | None) -> list[Trial]:
    """The trials predicted to keep the targets on a new image, fastest first; else one line with
    the best reached."""
    meeting = sorted((t for t in trials if t.meets(target_ssim, top_agreement)), key=lambda t: (t.seconds, -t.ssim_bound))
    if meeting:
        return meeting
    best = max(trials, key=lambda t: (t.ssim_bound, t.top_bound))
    wanted = f"SSIM {target_ssim:g}" + (f" and top-region agreement {top_agreement:g}" if top_agreement is not None else "")
    raise SettingsError(f"no approximate setting is predicted to keep {wanted} on a new image: the best predicted worst case "
                        f"is SSIM {best.ssim_bound:.3f}, top agreement {best.top_bound:.2f} (worst calibration image "
                        f"{min(best.ssim):.3f}, {min(best.top):.2f}; {best.candidate.describe()}); "
                        "exact evaluation is the way: leave out --target-ssim")


@dataclass(frozen=True)
class Calibration:
    """What a calibrated plan document records: the target, the settings chosen (threshold 1 and
    drill-down 1: exact, where no candidate was faster), their quality on the calibration images
    (worst, mean, and the worst predicted for a new image: `lower_bound`; null in plans calibrated
    before schema version 3), the measured speed-up over exact hybrid evaluation, and which images
    (sha256 of their pixels as explained) it was calibrated on."""

    target_ssim: float
    top_agreement: float | None
    approx_threshold: float
    drill_down: float
    coarse_stride: list[int] | None
    ssim_min: float
    ssim_mean: float
    top_min: float
    top_mean: float
    speedup: float
    candidates: int
    images: int
    fingerprints: list[str]
    ssim_bound: float | None
    top_bound: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Any) -> Calibration:
        """Validated: ValueError, TypeError or KeyError for anything malformed."""
        if not isinstance(body, dict) or set(body) != set(cls.__dataclass_fields__):
            raise ValueError(f"calibration must have exactly the keys {sorted(cls.__dataclass_fields__)}")
        for name in ("target_ssim", "approx_threshold", "drill_down", "ssim_min", "ssim_mean", "top_min", "top_mean"):
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not -1 <= value <= 1 or not math.isfinite(value):
                raise ValueError(f"calibration {name} must be a number in [-1, 1], got {value!r}")
        for name in ("ssim_bound", "top_bound"):
            value = body[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)):
                raise ValueError(f"calibration {name} must be null or a number, got {value!r}")
        check_target(body["target_ssim"], "calibration target_ssim")
        if body["top_agreement"] is not None:
            check_target(body["top_agreement"], "calibration top_agreement")
        speedup = body["speedup"]
        if isinstance(speedup, bool) or not isinstance(speedup, int | float) or not 0 < speedup < 1e6:
            raise ValueError(f"calibration speedup must be a positive number, got {speedup!r}")
        stride = body["coarse_stride"]
        if stride is not None and (not isinstance(stride, list) or len(stride) != 2
                                   or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s < 2**16 for s in stride)):
            raise ValueError(f"calibration coarse_stride must be null or two positive integers, got {stride!r}")
        for name in ("candidates", "images"):
            if isinstance(body[name], bool) or not isinstance(body[name], int) or not 0 < body[name] < 2**31:
                raise ValueError(f"calibration {name} must be a positive integer")
        prints = body["fingerprints"]
        if not isinstance(prints, list) or len(prints) != body["images"] or not all(
                isinstance(p, str) and len(p) == 64 and all(c in "0123456789abcdef" for c in p) for p in prints):
            raise ValueError("calibration fingerprints must be one sha256 (hex) per image")
        return cls(**body)
