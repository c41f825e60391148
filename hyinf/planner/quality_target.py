"""Approximation as part of the plan: the candidate settings, the choice of the fastest whose worst
calibration image keeps a quality target, and the calibration record a plan document carries.

Pure: the measurements come in (hyinf/calibration.py runs them), the choice and the record go out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from hyinf.errors import SettingsError

#: Projective-field thresholds and drill-down ratios searched (exact, 1 and 1, is not a candidate:
#: it is the way when none reaches the target), and coarse strides as multiples of the fine stride.
THRESHOLDS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
RATIOS = (1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1)
COARSE_MULTIPLES = (2, 3)


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
        drill = f", drill-down {self.drill_down:g} from {self.coarse_multiple}x the stride" if self.drill_down < 1 else ""
        return f"threshold {self.threshold:g}{drill}"


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

    def meets(self, target_ssim: float, top_agreement: float | None) -> bool:
        return min(self.ssim) >= target_ssim and (top_agreement is None or min(self.top) >= top_agreement)


def choose(trials: list[Trial], target_ssim: float, top_agreement: float | None) -> Trial:
    """The fastest trial whose worst image meets the targets; else one line with the best reached."""
    meeting = [t for t in trials if t.meets(target_ssim, top_agreement)]
    if meeting:
        return min(meeting, key=lambda t: (t.seconds, -min(t.ssim)))
    best = max(trials, key=lambda t: (min(t.ssim), min(t.top)))
    wanted = f"SSIM {target_ssim:g}" + (f" and top-region agreement {top_agreement:g}" if top_agreement is not None else "")
    raise SettingsError(f"no approximate setting reaches {wanted} on every calibration image: the best worst case is SSIM "
                        f"{min(best.ssim):.3f}, top agreement {min(best.top):.2f} ({best.candidate.describe()}); "
                        "exact evaluation is the way: leave out --target-ssim")


@dataclass(frozen=True)
class Calibration:
    """What a calibrated plan document records: the target, the settings chosen, their quality on the
    calibration images (worst and mean), the measured speed-up over exact hybrid evaluation, and which
    images (sha256 of their pixels as explained) it was calibrated on."""

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
