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
from hyinf.modes import BACKENDS
from hyinf.planner.document import MAX_ROUNDS, PlanDocument

FALSE_SWITCH = 1 / 8  # the most a chance win of any challenger may be

if TYPE_CHECKING:
    from hyinf.explainer import Explainer


@dataclass(frozen=True)
class Trial:
    """One candidate plan: its backend, its weight on incremental costs, the seconds its backend's model
    predicts for one image's positions, those measured (median) and its median ratio to the plan it was
    run against."""

    backend: str
    weight: float
    predicted_s: float
    measured_s: float
    ratio: float  # median of per-round (this / the best so far); 1 for the first candidate

    @classmethod
    def of(cls, document: PlanDocument, weight: float, measured_s: float, ratio: float) -> Trial:
        return cls(document.settings["backend"], weight, float(document.body["predicted_s"]["plan"]), measured_s, ratio)

    def to_json(self) -> dict[str, float | str]:
        return {"backend": self.backend, "weight": self.weight, "predicted_s": self.predicted_s, "measured_s": self.measured_s,
                "ratio": self.ratio}


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
    every trial is recorded in the document's `measured`, with the index of the one `chosen`.
    `explainer(document)` makes a warm-able Explainer running that plan."""
    check_rounds(rounds)
    if not candidates:
        raise ValueError("no candidate plans")
    rounds = min(MAX_ROUNDS, rounds_for(len(candidates) - 1, rounds))

    def timed(runner: Explainer) -> float:  # the positions' seconds: the clean pass is the same in every plan
        return float(runner.explain(image, 0).timings["positions_s"])

    chosen = 0
    best_runner = explainer(candidates[0][1])
    trials: list[Trial] = []
    with tqdm(total=len(candidates) - 1 + bool(len(candidates) == 1), desc="measuring plans", unit="plan",
              disable=not progress) as bar:
        timed(best_runner)  # builds its programs and sessions
        if len(candidates) == 1:
            times = [timed(best_runner) for _ in range(rounds)]
            trials.append(Trial.of(candidates[0][1], candidates[0][0], statistics.median(times), 1.0))
            bar.update()
        for k, (weight, document) in enumerate(candidates[1:], 1):
            runner = explainer(document)
            timed(runner)
            pairs = []
            for r in range(rounds):  # alternating order, so a drift within a round hits both alike
                first, second = (best_runner, runner) if r % 2 == 0 else (runner, best_runner)
                a, b = timed(first), timed(second)
                pairs.append((a, b) if r % 2 == 0 else (b, a))
            if not trials:
                trials.append(Trial.of(candidates[0][1], candidates[0][0], statistics.median(p[0] for p in pairs), 1.0))
            ratios = [c / max(i, 1e-12) for i, c in pairs]
            trials.append(Trial.of(document, weight, statistics.median(p[1] for p in pairs), statistics.median(ratios)))
            if max(ratios) < 1:
                chosen, best_runner = k, runner
            del runner
            gc.collect()  # a dropped program's weights wait for a full collection (torch.fx keeps cycles)
            bar.update()
    document = candidates[chosen][1]
    if "backend_choice" in document.body and {t.backend for t in trials} == set(BACKENDS):
        document = PlanDocument({**document.body, "backend_choice": _measured_choice(trials, trials[chosen].backend, rounds)})
    return document.measured({"rounds": rounds, "chosen": chosen, "trials": [t.to_json() for t in trials]})


def _measured_choice(trials: list[Trial], backend: str, rounds: int) -> dict[str, object]:
    """An `auto` plan's backend choice from the measurements: each backend's fastest plan's seconds stand
    for its prediction (`auto` weighs ORT's build against them)."""
    seconds = {b: min(t.measured_s for t in trials if t.backend == b) for b in BACKENDS}
    other = next(b for b in BACKENDS if b != backend)
    return {"backend": backend, "predicted_s": seconds,
            "reason": f"{backend}: kept by measurement over {rounds} rounds ({seconds[backend]:.2f} s against {other}'s "
                      f"{seconds[other]:.2f} s for one image's positions)"}

