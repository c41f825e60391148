"""Cost models fitted to synthetic measurements with a known law, and stored as plain data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.tree import DecisionTreeRegressor

from hyinf.profiler.cost_model import (
    Accuracy, AnalyticCosts, LearnedCosts, Ranking, _Forest, _Tree, predict_samples, ranking_agreement, split,
)
from hyinf.profiler.sample import Sample
from hyinf.profiler.timing import Timing

OVERHEAD, PER_FLOP, PER_BYTE = 2e-5, 1 / 40e9, 1 / 8e9
SLOW = {"pointwise/sigmoid": 3.0, "conv/conv": 1.0, "pointwise/relu": 1.0}  # per-op slowdown of the memory term


def _synthetic(n: int, seed: int = 0, op_factors: bool = False) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        op = list(SLOW)[i % len(SLOW)]
        kind = ("incremental", "full")[i % 2]
        channels, area, positions = rng.choice([8, 32, 128]), rng.integers(4, 3000), rng.choice([8, 32])
        flops = 2.0 * channels * 9 * channels * area * positions if op == "conv/conv" else 0.0
        nbytes = 8.0 * channels * area * positions
        factor = SLOW[op] if op_factors else 1.0
        t = OVERHEAD + PER_FLOP * flops + factor * PER_BYTE * nbytes
        features = {"positions": positions, "out_channels": channels, "in_channels": channels, "out_area": area, "in_area": area,
                    "out_map": 3136.0, "fraction": area / 3136, "macs": 9.0 * channels if op == "conv/conv" else 1.0, "kernel": 9.0,
                    "stride": 1.0, "inputs": 1.0, "flops": flops, "bytes": nbytes}
        out.append(Sample("sweep", f"cfg{i}/n", kind, op, {k: float(v) for k, v in features.items()}, Timing((t, t, t))))
    return out


def test_analytic_fit_recovers_the_law() -> None:
    model = AnalyticCosts.fit(_synthetic(300))
    for kind in ("incremental", "full"):
        overhead, per_flop, per_byte = model.coefficients[kind]
        assert overhead == pytest.approx(OVERHEAD, rel=1e-3)
        assert per_flop == pytest.approx(PER_FLOP, rel=1e-3)
        assert per_byte == pytest.approx(PER_BYTE, rel=1e-3)
    assert Accuracy.of(model, _synthetic(50, seed=1)).mape < 1e-6


def test_learned_model_finds_what_flops_and_bytes_miss() -> None:
    samples = _synthetic(600, op_factors=True)
    train, test = split(samples, seed=0)
    assert not {s.config for s in train} & {s.config for s in test}
    learned, analytic = LearnedCosts.fit(train), AnalyticCosts.fit(train)
    learned_acc, analytic_acc = Accuracy.of(learned, test), Accuracy.of(analytic, test)
    assert learned_acc.mape < 0.05
    assert learned_acc.mape < analytic_acc.mape / 3
    assert learned_acc.spearman > 0.99


def test_stored_model_predicts_the_same() -> None:
    samples = _synthetic(200, op_factors=True)
    model = LearnedCosts.fit(samples)
    body = json.loads(json.dumps(model.to_body()))  # plain JSON: nothing executable
    again = LearnedCosts.from_body(body)
    np.testing.assert_array_equal(predict_samples(model, samples), predict_samples(again, samples))
    body["features"] = body["features"][:-1]
    with pytest.raises(ValueError, match="re-run `hyinf profile`"):
        LearnedCosts.from_body(body)


def test_tree_arrays_predict_like_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6))
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    fitted = [DecisionTreeRegressor(max_depth=depth, random_state=0).fit(x, y).tree_ for depth in (1, 4, 7)]
    forest = _Forest.of([_Tree(t.children_left, t.children_right, t.feature, t.threshold, t.value[:, 0, 0]) for t in fitted], 6)
    probe = rng.normal(size=(300, 6))
    expected = np.stack([t.predict(probe.astype(np.float32))[:, 0] for t in fitted])
    np.testing.assert_allclose(forest.predict(probe.astype(np.float32).astype(np.float64)), expected)


@pytest.mark.parametrize("damage", ["loop", "backwards", "outside", "feature", "half_leaf", "short"])
def test_a_damaged_stored_tree_is_refused_not_walked(damage: str) -> None:
    """A stored model's trees come from the database: one whose walk could loop or read out of range is refused."""
    t = DecisionTreeRegressor(max_depth=3, random_state=0).fit(np.eye(6), np.arange(6.0)).tree_
    arrays = [t.children_left.copy(), t.children_right.copy(), t.feature.copy(), t.threshold.copy(), t.value[:, 0, 0].copy()]
    left, right, feature = arrays[0], arrays[1], arrays[2]
    if damage == "loop":
        left[0] = 0
    elif damage == "backwards":
        right[1 if left[1] >= 0 else 0] = 0
    elif damage == "outside":
        right[0] = len(left)
    elif damage == "feature":
        feature[0] = 6
    elif damage == "half_leaf":
        right[np.flatnonzero(left < 0)[0]] = 1
    else:
        arrays[3] = arrays[3][:-1]
    with pytest.raises(ValueError, match="stored tree"):
        _Forest.of([_Tree(*arrays)], 6)


def test_ranking_agreement_counts_nodes() -> None:
    def pair(node: str, inc: float, full: float) -> list[Sample]:
        features = _synthetic(1)[0].features
        return [Sample("model", f"m/{node}", "incremental", "conv/conv", features, Timing((inc,))),
                Sample("model", f"m/{node}", "full", "conv/conv", features, Timing((full,)))]

    class Fixed:  # predicts incremental cheaper than full, always
        def predict(self, rows: list) -> np.ndarray:
            return np.array([1.0 if kind == "incremental" else 2.0 for kind, _, _ in rows])

    samples = pair("a", 1.0, 3.0) + pair("b", 5.0, 3.0) + pair("c", 0.5, 0.6)
    assert ranking_agreement(Fixed(), samples) == Ranking(2, 0, 3)
    near = pair("d", 1.05, 1.0)  # a 5% difference: a tie, either choice is right
    assert ranking_agreement(Fixed(), samples + near) == Ranking(2, 1, 4)


def test_unseen_operations_get_the_analytic_estimate() -> None:
    samples = _synthetic(200, op_factors=True)
    model = LearnedCosts.fit(samples)
    features = samples[0].features
    rows = [("full", "opaque/never_profiled", features), ("incremental", "pointwise/sigmoid", features)]
    predicted = model.predict(rows)
    assert predicted[0] == model.analytic.predict(rows[:1])[0]
    assert predicted[1] != model.analytic.predict(rows[1:])[0]
