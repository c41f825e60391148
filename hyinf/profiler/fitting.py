"""Fitting a device's cost model from its measurements, with honest held-out accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hyinf.profiler.cost_model import Accuracy, AnalyticCosts, LearnedCosts, ranking_agreement, split
from hyinf.profiler.sample import Sample


@dataclass(frozen=True)
class FitReport:
    """Accuracy on configurations the models were not fitted to."""

    learned: Accuracy
    analytic: Accuracy
    train: int  # samples fitted to
    ranking: tuple[int, int] | None  # (agree, nodes) on model layers, incremental vs full

    def to_json(self) -> dict[str, Any]:
        return {"learned": asdict(self.learned), "analytic": asdict(self.analytic), "train": self.train, "ranking": self.ranking}


def evaluate(samples: Sequence[Sample], seed: int = 0) -> FitReport:
    """Fit both models to 80% of the sweep configurations; score them on the rest and on every model layer.

    Model-layer samples are never fitted to here, so the ranking agreement says how well the
    device-wide sweep predicts layers of real networks.
    """
    sweep = [s for s in samples if s.source == "sweep"]
    layers = [s for s in samples if s.source != "sweep"]
    train, test = split(sweep, seed=seed)
    learned, analytic = LearnedCosts.fit(train, seed), AnalyticCosts.fit(train)
    ranking = ranking_agreement(learned, layers) if layers else None
    return FitReport(Accuracy.of(learned, test), Accuracy.of(analytic, test), len(train), ranking)


def fit(samples: Sequence[Sample], seed: int = 0) -> LearnedCosts:
    """The model to plan with: fitted to every measurement."""
    return LearnedCosts.fit(samples, seed)
