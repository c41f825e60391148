"""Cost models: predict the seconds an operator takes in each mode, and each conversion, from features.

Two models behind one interface (`predict(kind, op, features) -> seconds`):

* `AnalyticCosts`: time = overhead + FLOPs / rate + bytes / bandwidth, per kind of work. With default
  constants it serves when no profile exists (planning must always work); fitted to measurements it
  is the baseline the learned model must beat.
* `LearnedCosts`: the fitted analytic model times a learned correction: gradient-boosted trees
  (scikit-learn) predict log(measured / analytic) from log-scaled features. The analytic factor carries
  the scaling to configurations larger than any profiled; the trees learn where the machine is
  faster or slower than FLOPs and bytes say (small windows, depthwise kernels, gathers).

Both are stored as data (coefficients, and each tree's arrays), never pickled, and predict with
numpy alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hyinf.graph.ir import Op
from hyinf.profiler.features import NUMERIC, log_features
from hyinf.profiler.sample import KINDS, Sample

FORMAT_VERSION = 2

#: Default analytic constants (overhead s, s per FLOP, s per byte) when a device was never profiled.
DEFAULTS = {
    "cpu": (2e-5, 1 / 50e9, 1 / 5e9),
    "cuda": (2e-5, 1 / 10e12, 1 / 500e9),
}


Row = tuple[str, str, Mapping[str, float]]  # (kind of work, operation, features)


class CostModel(Protocol):
    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        """Seconds for each row (kinds: `hyinf.profiler.sample.KINDS`; operations: `sample_op`)."""
        ...


@dataclass(frozen=True)
class AnalyticCosts:
    coefficients: Mapping[str, tuple[float, float, float]]  # kind -> (overhead, s/FLOP, s/byte)
    name: str = "analytic FLOP/byte"

    @classmethod
    def default(cls, device_kind: str) -> AnalyticCosts:
        return cls({kind: DEFAULTS.get(device_kind, DEFAULTS["cpu"]) for kind in KINDS}, "analytic FLOP/byte (default constants)")

    @classmethod
    def fit(cls, samples: Sequence[Sample]) -> AnalyticCosts:
        """Non-negative least squares on relative error, separately per kind of work."""
        coefficients = {}
        for kind in KINDS:
            rows = [s for s in samples if s.kind == kind]
            if not rows:
                coefficients[kind] = DEFAULTS["cpu"]
                continue
            t = np.array([s.timing.median for s in rows])
            a = np.array([[1.0, s.features["flops"], s.features["bytes"]] for s in rows]) / t[:, None]
            scale = a.max(axis=0) + 1e-30  # condition the columns, then undo
            from scipy.optimize import nnls  # fitting only: planning with a stored model never loads scipy

            x, _ = nnls(a / scale, np.ones(len(rows)))
            coefficients[kind] = tuple(float(v) for v in x / scale)
        return cls(coefficients)

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        out = np.array([sum(c * v for c, v in zip(self.coefficients[kind], (1.0, f["flops"], f["bytes"]))) for kind, _, f in rows])
        return np.maximum(out, 1e-7)

    def to_body(self) -> dict[str, Any]:
        return {kind: list(c) for kind, c in self.coefficients.items()}


OPS = tuple(op.value for op in Op)
#: Operations told apart by the learned model; others count by their IR category alone.
FUNCTIONS = ("conv", "max_pool", "avg_pool", "relu", "relu6", "hardtanh", "sigmoid", "hardsigmoid", "hardswish", "silu", "gelu", "tanh",
             "batch_norm", "add", "sub", "mul", "div", "cat", "pad")


def sample_op(category: str, fn: str) -> str:
    """How samples name an operation: its IR category and its canonical function."""
    return f"{category}/{fn}"


def design_matrix(rows: Sequence[Row]) -> np.ndarray:
    """Log-scaled numeric features with one-hot kind, IR category and function, one row per row."""
    out = []
    for kind, op, f in rows:
        category, _, fn = op.partition("/")
        one_hot = [float(kind == k) for k in KINDS] + [float(category == o) for o in OPS] + [float(fn == x) for x in FUNCTIONS]
        out.append(log_features(dict(f)) + one_hot)
    return np.array(out, dtype=np.float64).reshape(len(out), -1)


@dataclass(frozen=True)
class _Tree:
    """One regression tree as arrays (scikit-learn's tree_ fields), as stored."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray


@dataclass(frozen=True)
class _Forest:
    """Trees as one set of arrays, walked together (600 rows through 600 trees: 39 ms, against 57 ms a tree
    at a time), and checked once: a stored tree whose walk could loop or index outside it is refused."""

    left: np.ndarray  # children as indices into the joined arrays, -1 at leaves
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray
    roots: np.ndarray

    @classmethod
    def of(cls, trees: Sequence[_Tree], features: int) -> _Forest:
        """The trees joined; ValueError where one is not a tree over `features` features (a damaged
        stored model: children must come after their node, so every walk ends)."""
        sizes = [len(t.left) for t in trees]
        roots = np.cumsum([0, *sizes])[:-1].astype(np.int64)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("left", "right", "feature", "threshold", "value")}
        for t, root, size in zip(trees, roots, sizes, strict=True):
            index, leaf = np.arange(size), t.left < 0
            if size == 0 or any(len(a) != size for a in (t.right, t.feature, t.threshold, t.value)) or np.any(leaf != (t.right < 0)):
                raise ValueError("a stored tree's arrays do not describe a tree")
            inner = ~leaf
            if np.any((t.left[inner] <= index[inner]) | (t.left[inner] >= size) | (t.right[inner] <= index[inner])
                      | (t.right[inner] >= size) | (t.feature[inner] < 0) | (t.feature[inner] >= features)):
                raise ValueError("a stored tree's children or features are out of range")
            parts["left"].append(np.where(leaf, -1, t.left + root))
            parts["right"].append(np.where(leaf, -1, t.right + root))
            parts["feature"].append(np.where(leaf, 0, t.feature))
            parts["threshold"].append(t.threshold)
            parts["value"].append(t.value)
        joined = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        return cls(joined["left"].astype(np.int64), joined["right"].astype(np.int64), joined["feature"].astype(np.int64),
                   joined["threshold"].astype(np.float64), joined["value"].astype(np.float64), roots)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Each tree's prediction for each row of `x`: (trees, rows)."""
        node = np.repeat(self.roots[:, None], len(x), axis=1)
        rows = np.arange(len(x))[None, :]
        while True:
            left = self.left[node]
            inner = left >= 0
            if not inner.any():
                return self.value[node]
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, left, self.right[node]), node)


@dataclass(frozen=True)
class LearnedCosts:
    analytic: AnalyticCosts
    init: float
    learning_rate: float
    trees: tuple[_Tree, ...]
    seen: frozenset[tuple[str, str]]  # (kind, operation) pairs fitted to; others get the analytic estimate
    name: str = "learned (boosted trees)"

    @classmethod
    def fit(cls, samples: Sequence[Sample], seed: int = 0) -> LearnedCosts:
        analytic = AnalyticCosts.fit(samples)
        rows = rows_of(samples)
        x = design_matrix(rows)
        residual = np.log([s.timing.median for s in samples]) - np.log(analytic.predict(rows))
        # Huber loss: timings on a shared machine have outliers. Depth and count chosen on held-out sweep data.
        from sklearn.ensemble import GradientBoostingRegressor  # fitting only

        gbr = GradientBoostingRegressor(loss="huber", alpha=0.8, n_estimators=600, max_depth=6, learning_rate=0.05, subsample=0.8, min_samples_leaf=3, random_state=seed)
        gbr.fit(x, residual)
        trees = tuple(
            _Tree(t.children_left.copy(), t.children_right.copy(), t.feature.copy(), t.threshold.copy(), t.value[:, 0, 0].copy())
            for t in (e[0].tree_ for e in gbr.estimators_)
        )
        seen = frozenset((s.kind, s.op) for s in samples)
        return cls(analytic, float(np.ravel(gbr.init_.constant_)[0]), float(gbr.learning_rate), trees, seen)

    def __post_init__(self) -> None:
        features = len(NUMERIC) + len(KINDS) + len(OPS) + len(FUNCTIONS)
        object.__setattr__(self, "_forest", _Forest.of(self.trees, features))  # checked once, walked per prediction

    def correction(self, x: np.ndarray) -> np.ndarray:
        """log(measured / analytic) predicted for design-matrix rows."""
        x32 = x.astype(np.float32).astype(np.float64)  # scikit-learn compares features as float32
        per_tree: np.ndarray = self._forest.predict(x32)  # type: ignore[attr-defined]
        return self.init + self.learning_rate * per_tree.sum(axis=0)

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        if not rows:
            return np.zeros(0)
        known = np.array([(kind, op) in self.seen for kind, op, _ in rows])
        # Trees say nothing reliable about operations they never saw: keep the analytic estimate there.
        return self.analytic.predict(rows) * np.exp(np.where(known, self.correction(design_matrix(rows)), 0.0))

    def to_body(self) -> dict[str, Any]:
        return {
            "features": list(NUMERIC),
            "kinds": list(KINDS),
            "ops": list(OPS),
            "functions": list(FUNCTIONS),
            "analytic": self.analytic.to_body(),
            "init": self.init,
            "learning_rate": self.learning_rate,
            "seen": sorted([kind, op] for kind, op in self.seen),
            "trees": [
                {"left": t.left.tolist(), "right": t.right.tolist(), "feature": t.feature.tolist(), "threshold": t.threshold.tolist(), "value": t.value.tolist()}
                for t in self.trees
            ],
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> LearnedCosts:
        """Rebuild a stored model; raises ValueError when it was made for other features."""
        if body.get("features") != list(NUMERIC) or body.get("kinds") != list(KINDS) or body.get("ops") != list(OPS) or body.get("functions") != list(FUNCTIONS):
            raise ValueError("stored cost model uses other features than this hyinf; re-run `hyinf profile`")
        analytic = AnalyticCosts({k: tuple(v) for k, v in body["analytic"].items()})
        trees = tuple(
            _Tree(
                np.asarray(t["left"], dtype=np.int64), np.asarray(t["right"], dtype=np.int64), np.asarray(t["feature"], dtype=np.int64),
                np.asarray(t["threshold"], dtype=np.float64), np.asarray(t["value"], dtype=np.float64),
            )
            for t in body["trees"]
        )
        seen = frozenset((str(kind), str(op)) for kind, op in body["seen"])
        return cls(analytic, float(body["init"]), float(body["learning_rate"]), trees, seen)


def rows_of(samples: Sequence[Sample]) -> list[Row]:
    return [(s.kind, s.op, s.features) for s in samples]


def predict_samples(model: CostModel, samples: Sequence[Sample]) -> np.ndarray:
    """The model's prediction for every sample, in order."""
    return model.predict(rows_of(samples))


@dataclass(frozen=True)
class Accuracy:
    """How well a model predicts measured times."""

    mape: float  # median absolute percentage error
    spearman: float  # rank correlation of predicted and measured times
    count: int

    @classmethod
    def of(cls, model: CostModel, samples: Sequence[Sample]) -> Accuracy:
        measured = np.array([s.timing.median for s in samples])
        predicted = predict_samples(model, samples)
        mape = float(np.median(np.abs(predicted - measured) / measured))
        from scipy.stats import spearmanr

        return cls(mape, float(spearmanr(predicted, measured).statistic), len(samples))


def config_group(sample: Sample) -> str:
    """The configuration a sample belongs to (its config id without the node name)."""
    return sample.config.rsplit("/", 1)[0]


def split(samples: Sequence[Sample], held_out: float = 0.2, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Train/test split by configuration, so a test configuration was never seen in training."""
    groups = sorted({config_group(s) for s in samples})
    rng = np.random.default_rng(seed)
    test = set(rng.choice(groups, size=max(1, round(held_out * len(groups))), replace=False).tolist()) if len(groups) > 1 else set()
    return [s for s in samples if config_group(s) not in test], [s for s in samples if config_group(s) in test]


#: Measured incremental and full times closer than this (relative) are a tie: either choice costs the same.
TIE = 0.10


@dataclass(frozen=True)
class Ranking:
    """Per node, whether the model orders incremental vs full evaluation as measured."""

    agree: int
    ties: int  # disagreements where the measured times are within TIE of each other
    nodes: int

    def __add__(self, other: Ranking) -> Ranking:
        return Ranking(self.agree + other.agree, self.ties + other.ties, self.nodes + other.nodes)


def ranking_agreement(model: CostModel, samples: Sequence[Sample]) -> Ranking:
    """Compare the model's cheaper mode with the measured cheaper mode on every node with both timed."""
    pairs: dict[str, dict[str, Sample]] = {}
    for s in samples:
        if s.kind in ("incremental", "full"):
            pairs.setdefault(s.config, {})[s.kind] = s
    both = [p for p in pairs.values() if len(p) == 2]
    agree = ties = 0
    for p in both:
        inc, full = predict_samples(model, [p["incremental"], p["full"]])
        measured_inc, measured_full = p["incremental"].timing.median, p["full"].timing.median
        if (inc < full) == (measured_inc < measured_full):
            agree += 1
        elif abs(measured_inc - measured_full) <= TIE * max(measured_inc, measured_full):
            ties += 1
    return Ranking(agree, ties, len(both))
