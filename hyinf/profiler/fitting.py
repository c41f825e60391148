"""Fitting a device's cost model from its measurements, with honest held-out accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hyinf.profiler.cost_model import Accuracy, AnalyticCosts, LearnedCosts, Ranking, ranking_agreement, split
from hyinf.profiler.sample import Sample


@dataclass(frozen=True)
class FitReport:
    """Accuracy on measurements the models were not fitted to."""

    learned: Accuracy  # on held-out sweep configurations
    analytic: Accuracy  # the same configurations
    train: int  # samples fitted to
    ranking: Ranking | None  # incremental vs full on model layers, 2-fold over layers
    ranking_sweep_only: Ranking | None  # the same from a model fitted to the sweep alone

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _layer_folds(layers: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """Model layers split into alternate nodes (in graph order), so each fold has neighbours of every kind."""
    order = list(dict.fromkeys(s.config for s in layers))
    even = set(order[::2])
    return [s for s in layers if s.config in even], [s for s in layers if s.config not in even]


def evaluate(samples: Sequence[Sample], seed: int = 0) -> FitReport:
    """Fit to 80% of the sweep's configurations (plus half of any profiled model's layers) and score on the rest.

    The error figures come from sweep configurations never fitted to. The ranking of incremental vs
    full per model layer is scored twice: fitted to the other half of that model's layers (what
    `hyinf profile --model` gives a planner) and fitted to the sweep alone (how the device-wide
    sweep transfers to an unseen network).
    """
    sweep = [s for s in samples if s.source == "sweep"]
    layers = [s for s in samples if s.source != "sweep"]
    train, test = split(sweep, seed=seed)
    analytic = AnalyticCosts.fit(train)
    if not layers:
        learned = LearnedCosts.fit(train, seed)
        return FitReport(Accuracy.of(learned, test), Accuracy.of(analytic, test), len(train), None, None)
    first, second = _layer_folds(layers)
    learned = LearnedCosts.fit(train + first, seed)
    ranking = ranking_agreement(learned, second) + ranking_agreement(LearnedCosts.fit(train + second, seed), first)
    sweep_only = ranking_agreement(LearnedCosts.fit(train, seed), layers)
    return FitReport(Accuracy.of(learned, test), Accuracy.of(analytic, test), len(train) + len(first), ranking, sweep_only)


def fit(samples: Sequence[Sample], seed: int = 0) -> LearnedCosts:
    """The model to plan with: fitted to every measurement."""
    return LearnedCosts.fit(samples, seed)
