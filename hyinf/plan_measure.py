"""Choosing a plan by running it (`hyinf plan --measure ROUNDS`): the cost model proposes plans near its
optimum (`hyinf.planner.candidates`), the backend runs each on an image and the measured fastest is kept.

A cost model profiled on small graphs misses what only a whole model shows (on ONNX Runtime: kernels
fused across nodes, windows reordered into its blocked layout), and near the optimum plans differ by
a few percent, less than such misses. So the plan is settled by measurement, as a tuner would: a
tournament in which the current best and one challenger run in alternating order for the same rounds
(only two programs and their ONNX Runtime sessions are alive at once: three vgg16 sessions held
14 GB), and the challenger wins when it ran faster in every round: a sign test, since the plans differ
by less than rounds do (resnet18 on ORT: plans within 3%, rounds of one plan 4-13% apart). A plan no
faster than the best passes R rounds by chance one time in 2^R, so with C challengers the rounds
asked for are raised to make a chance win of any of them at most one time in 8 (C / 2^R <= 1/8):
with 3 rounds, the four challengers resnet18 has were picked by chance and ran no faster later.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from hyinf.errors import SettingsError
from hyinf.planner.document import MAX_ROUNDS, PlanDocument

FALSE_SWITCH = 1 / 8  # the most a chance win of any challenger may be

if TYPE_CHECKING:
    from hyinf.explainer import Explainer


@dataclass(frozen=True)
class Trial:
    """One candidate plan: its weight on incremental costs, the seconds the model predicts for one image's
    positions, those measured (median) and its median ratio to the plan it was run against."""

    weight: float
    predicted_s: float
    measured_s: float
    ratio: float  # median of per-round (this / the best so far); 1 for the first candidate

    def to_json(self) -> dict[str, float]:
        return {"weight": self.weight, "predicted_s": self.predicted_s, "measured_s": self.measured_s, "ratio": self.ratio}


def check_rounds(rounds: int) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
        raise SettingsError(f"measuring plans takes 1 to {MAX_ROUNDS} rounds, got {rounds!r}")


def rounds_for(challengers: int, asked: int) -> int:
    """`asked`, or more, so that `challengers` plans no faster than the best all pass the sign test by
    chance with a probability of at most FALSE_SWITCH together."""
    return asked if challengers == 0 else max(asked, math.ceil(math.log2(challengers / FALSE_SWITCH)))


def measured_choice(candidates: Sequence[tuple[float, PlanDocument]], explainer: Callable[[PlanDocument], Explainer],
                    image: torch.Tensor, rounds: int, progress: bool = False) -> PlanDocument:
    """The candidate (weight, plan document) measured fastest on `image` over at least `rounds` rounds
    (`rounds_for`): the first (the cost model's own optimum) unless another beats it in every round;
    every trial is recorded in the document's `measured`.
    `explainer(document)` makes a warm-able Explainer running that plan."""
    check_rounds(rounds)
    if not candidates:
        raise ValueError("no candidate plans")
    rounds = min(MAX_ROUNDS, rounds_for(len(candidates) - 1, rounds))

    def timed(runner: Explainer) -> float:  # the positions' seconds: the clean pass is the same in every plan
        return float(runner.explain(image, 0).timings["positions_s"])

    best_weight, best = candidates[0]
    best_runner = explainer(best)
    trials: list[Trial] = []
    with tqdm(total=len(candidates) - 1 + bool(len(candidates) == 1), desc="measuring plans", unit="plan",
              disable=not progress) as bar:
        timed(best_runner)  # builds its programs and sessions
        if len(candidates) == 1:
            times = [timed(best_runner) for _ in range(rounds)]
            trials.append(Trial(best_weight, _predicted(best), statistics.median(times), 1.0))
            bar.update()
        for weight, document in candidates[1:]:
            runner = explainer(document)
            timed(runner)
            pairs = []
            for r in range(rounds):  # alternating order, so a drift within a round hits both alike
                first, second = (best_runner, runner) if r % 2 == 0 else (runner, best_runner)
                a, b = timed(first), timed(second)
                pairs.append((a, b) if r % 2 == 0 else (b, a))
            if not trials:
                trials.append(Trial(best_weight, _predicted(best), statistics.median(p[0] for p in pairs), 1.0))
            ratios = [c / max(i, 1e-12) for i, c in pairs]
            trials.append(Trial(weight, _predicted(document), statistics.median(p[1] for p in pairs), statistics.median(ratios)))
            if max(ratios) < 1:
                best_weight, best, best_runner = weight, document, runner
            del runner
            gc.collect()  # a dropped program's weights wait for a full collection (torch.fx keeps cycles)
            bar.update()
    return best.measured({"rounds": rounds, "chosen_weight": best_weight, "trials": [t.to_json() for t in trials]})


def _predicted(document: PlanDocument) -> float:
    return float(document.body["predicted_s"]["plan"])

