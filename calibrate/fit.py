"""Fitters that turn calibration samples into the profile's latency, link and acceptance models.

One shape throughout, after scikit-learn: a model is configured at construction (arguments
checked there, messages naming the argument and its allowed values), `fit(X, y)` returns the
fitted model, `predict(X)` answers. Every fit comes with a `FitReport` whose headline number is
the held-out MAPE from deterministic k-fold cross-validation (goal: <= 5%). Latency and link
reports give it twice: per sample, and per configuration (the median of a configuration's
repeated samples, predicted by a model fitted without any of them), with the samples' timing
noise beside it, so that a noisy machine and a wrong model can be told apart.

Latency and link models are affine with non-negative coefficients and intercept (a latency
cannot shrink as work grows, nor start below zero): non-negative least squares on [1, x]
columns (`scipy.optimize.nnls`). Where the profile schema needs the intercept > 0 (a draft's
decode step, a target's forward pass: each has a fixed cost), it is bounded below by
MIN_BASE_FRACTION (1%) of the fastest sample (where NNLS's intercept falls below the bound,
the intercept is set to it and the slopes fitted again), so noisy samples that extrapolate to
0 still give a valid model; its report says the bound held, and the held-out MAPE (folds
fitted with the same bound) shows what it costs. By default each sample's residual is
divided by its measured value ("relative" weighting), so the fit minimises squared relative
error: the quantity MAPE measures, and the right weighting for timing noise that scales with
the time measured.

Every failure raises ValueError (TypeError for a sample of the wrong kind) with a one-line
message saying what is wrong: too few samples (and how many are needed), a feature that never
varies (so its slope cannot be identified), features that vary together, a fitted value the
profile schema forbids.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls

from calibrate.samples import (
    AcceptanceSample,
    DecodeSample,
    ForwardSample,
    PrefillSample,
    TransferSample,
)
from simulator.profile import (
    CalibratedAcceptance,
    DraftLatency,
    HistogramConfidence,
    TableCurve,
    TargetLatency,
)

DEFAULT_FOLDS = 5
"""k of k-fold cross-validation (k = min(DEFAULT_FOLDS, n) for n samples)."""

MIN_CONFIGS = 3
"""Fewest configurations (distinct feature vectors) the per-configuration held-out MAPE needs."""

MAPE_GOAL = 0.05
"""Fit-quality goal from the calibration issue: held-out MAPE <= 5%."""

WEIGHTINGS = ("relative", "absolute")
"""How AffineModel weighs residuals: divided by the measured y, or as they are."""


# --------------------------------------------------------------------------------------------
# Metrics and reports
# --------------------------------------------------------------------------------------------


def mape(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> float:
    """Mean absolute percentage error, as a fraction: mean(|y_pred - y_true| / |y_true|).

    0.05 means 5%. Every y_true must be non-zero (ValueError otherwise).
    """
    truth = np.asarray(y_true, dtype=float)
    pred = np.asarray(y_pred, dtype=float)
    if truth.shape != pred.shape or truth.ndim != 1 or truth.size == 0:
        raise ValueError(
            f"mape: y_true and y_pred must be equal-length, non-empty 1-D arrays "
            f"(got shapes {truth.shape} and {pred.shape})"
        )
    zero = np.flatnonzero(truth == 0.0)
    if zero.size:
        raise ValueError(f"mape: y_true must be non-zero (sample {int(zero[0])} is 0)")
    return float(np.mean(np.abs(pred - truth) / np.abs(truth)))


@dataclass(frozen=True)
class FitReport:
    """How well a fitted model predicts data it was not fitted on.

    `mape_holdout` is the held-out mean absolute percentage error, as a fraction (0.05 = 5%):
    the n samples are split into k = min(5, n) folds deterministically (sorted by their
    features, sample of rank r goes to fold r mod k, so the folds do not depend on the order the
    samples were given in and each spans the measured range); each fold is predicted by the
    model refitted on the other k - 1 folds, and the mean of |predicted - measured| / measured
    is taken over all n samples (pooled, not a mean of per-fold means). `mape_train` is the same
    error of the model fitted on all samples, predicting those samples.

    A sample's error mixes the model's error with the timing noise of one measurement, and
    repetitions of one configuration (samples with identical features) fall in training and
    test folds alike. Latency and link reports therefore also hold, over the `n_configs`
    configurations: `mape_holdout_config`, the held-out MAPE per configuration: configurations
    (sorted by their features) go to k = min(5, n_configs) folds as samples do above, each fold's
    configurations are predicted by the model refitted on the samples of the other folds' ones,
    and the error is taken against each configuration's median time (mean over configurations);
    and `noise_spread`, the timing noise of single samples: the median over configurations
    measured more than once of (median absolute deviation of its samples / its median time).
    `mape_holdout_config` is NaN with fewer than MIN_CONFIGS (3) configurations, `noise_spread`
    when no configuration was measured twice; both are NaN (and `n_configs` 0) for acceptance.

    Acceptance models predict a probability of a binary outcome, for which MAPE means nothing:
    their reports hold NaN in the MAPE fields and fill `brier_holdout` / `brier_train` (mean
    squared difference between predicted probability and outcome 0/1; lower is better, 0.25
    is a coin flip's score on balanced outcomes) and `calibration_error_holdout` (held-out
    expected calibration error, an absolute probability: for each fold and each confidence
    bin, |P(accept) of the table fitted on the other folds - acceptance rate observed in the
    fold|, averaged with weights = the fold's samples in the bin, over all n samples). The
    calibration error includes the sampling noise of the held-out folds, so it overstates the
    table's error on few samples and shrinks as samples grow (about 0.03 at 5k samples and 0.01
    at 50k with 10 bins).
    """

    n_samples: int
    mape_holdout: float
    mape_train: float
    method: str
    brier_holdout: float = math.nan
    brier_train: float = math.nan
    calibration_error_holdout: float = math.nan
    mape_holdout_config: float = math.nan
    noise_spread: float = math.nan
    n_configs: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int | np.integer):
            raise ValueError(
                f"FitReport.n_samples must be an integer >= 1 (got {self.n_samples!r})"
            )
        if self.n_samples < 1:
            raise ValueError(f"FitReport.n_samples must be an integer >= 1 (got {self.n_samples})")
        if (
            isinstance(self.n_configs, bool)
            or not isinstance(self.n_configs, int | np.integer)
            or not 0 <= self.n_configs <= self.n_samples
        ):
            raise ValueError(
                f"FitReport.n_configs must be an integer in [0, n_samples = {self.n_samples}] "
                f"(got {self.n_configs!r})"
            )
        for name in (
            "mape_holdout",
            "mape_train",
            "brier_holdout",
            "brier_train",
            "calibration_error_holdout",
            "mape_holdout_config",
            "noise_spread",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float | np.floating) or not (
                math.isnan(value) or 0.0 <= value < math.inf
            ):
                raise ValueError(
                    f"FitReport.{name} must be a finite number >= 0 or NaN (got {value!r})"
                )
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"FitReport.method must be a non-empty string (got {self.method!r})")

    def passes(self, goal: float = MAPE_GOAL) -> bool:
        """Whether the fit meets `goal`. Latency and link models: held-out MAPE per
        configuration <= goal where measured, else per sample (the simulator uses a
        configuration's typical time: the per-sample error adds single-timing noise it never
        sees). Acceptance models (MAPE NaN): held-out calibration error <= goal (absolute
        probability). False when none was measured."""
        if isinstance(goal, bool) or not isinstance(goal, int | float) or not 0.0 < goal < math.inf:
            raise ValueError(f"passes: goal must be a finite number > 0 (got {goal!r})")
        if not math.isnan(self.mape_holdout_config):
            return self.mape_holdout_config <= goal
        if not math.isnan(self.mape_holdout):
            return self.mape_holdout <= goal
        if not math.isnan(self.calibration_error_holdout):
            return self.calibration_error_holdout <= goal
        return False

    def note(self) -> str:
        """One line for a profile's provenance notes."""
        if math.isnan(self.mape_holdout):
            return (
                f"held-out Brier {self.brier_holdout:.4f}, calibration error "
                f"{self.calibration_error_holdout:.4f} (train Brier {self.brier_train:.4f}, "
                f"{self.n_samples} samples; {self.method})"
            )
        per_sample = f"{100 * self.mape_holdout:.2f}%"
        train = f"train {100 * self.mape_train:.2f}%, {self.n_samples} samples"
        if not self.n_configs:  # no configuration-level metrics (a report built by hand)
            return f"held-out MAPE {per_sample} ({train}; {self.method})"
        configs = f"{self.n_configs} configuration{'s' if self.n_configs != 1 else ''}"
        noise = (
            f"timing noise {100 * self.noise_spread:.2f}%"
            if not math.isnan(self.noise_spread)
            else "timing noise not measured: no configuration repeated"
        )
        if math.isnan(self.mape_holdout_config):
            return (
                f"held-out MAPE {per_sample} per sample (per configuration not computed: "
                f"{configs}, needs {MIN_CONFIGS}; {noise}; {train}; {self.method})"
            )
        return (
            f"held-out MAPE {100 * self.mape_holdout_config:.2f}% per configuration "
            f"({per_sample} per sample, {noise}; {train} in {configs}; {self.method})"
        )


def _folds(keys: np.ndarray, folds: int) -> tuple[np.ndarray, int]:
    """Fold index per sample: samples sorted by the columns of `keys` (first column first),
    rank r goes to fold r mod k, k = min(folds, n)."""
    n = keys.shape[0]
    k = min(folds, n)
    order = np.lexsort(keys.T[::-1]) if keys.shape[1] else np.arange(n)
    fold_of = np.empty(n, dtype=int)
    fold_of[order] = np.arange(n) % k
    return fold_of, k


def _configurations(design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct feature vectors sorted by their columns, first column first; the index of
    each sample's configuration in them)."""
    keys, inverse = np.unique(design, axis=0, return_inverse=True)
    return keys, inverse.reshape(-1)


def _noise_spread(target: np.ndarray, config_of: np.ndarray, medians: np.ndarray) -> float:
    """Median over configurations with 2+ samples of MAD / median; NaN if there are none."""
    spreads = [
        float(np.median(np.abs(target[config_of == c] - medians[c]))) / abs(medians[c])
        for c in range(medians.size)
        if np.count_nonzero(config_of == c) > 1
    ]
    return float(np.median(spreads)) if spreads else math.nan


def _check_folds(folds: Any) -> int:
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2 (got {folds!r})")
    return int(folds)


# --------------------------------------------------------------------------------------------
# The affine model
# --------------------------------------------------------------------------------------------


class AffineModel:
    """y = intercept_ + coef_ · x, fitted by (non-negative) weighted least squares.

    Arguments (checked here, ValueError naming the argument otherwise):
    - `feature_names`: one non-empty, distinct name per column of X (used in messages);
      default a single feature "x".
    - `weighting`: "relative" (default: residuals divided by y, i.e. least squared relative
      error; every y must be > 0) or "absolute" (ordinary least squares).
    - `nonnegative`: True (default) constrains intercept and coefficients to >= 0
      (`scipy.optimize.nnls`); False fits them unconstrained (`numpy.linalg.lstsq`).
    - `min_intercept`: a lower bound on the intercept (default 0: none beyond `nonnegative`).
      When the solution above has a smaller intercept, the best fit within the bound has the
      intercept at the bound, and the slopes are fitted to y - bound (`intercept_at_bound_`
      then says so).

    `fit` needs at least as many samples as parameters (features + 1), every feature must take
    at least two distinct values, and no feature may be an affine combination of the others;
    otherwise its slope is not identified and `fit` says which. After `fit`: `intercept_`
    (float) and `coef_` (array, one per feature).
    """

    def __init__(
        self,
        feature_names: Sequence[str] = ("x",),
        *,
        weighting: str = "relative",
        nonnegative: bool = True,
        min_intercept: float = 0.0,
    ) -> None:
        if isinstance(feature_names, str) or not isinstance(feature_names, Sequence):
            raise ValueError(
                f"AffineModel: feature_names must be a sequence of strings (got {feature_names!r})"
            )
        names = tuple(feature_names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(
                f"AffineModel: feature_names must hold at least one non-empty string "
                f"(got {feature_names!r})"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"AffineModel: feature_names must be distinct (got {names!r})")
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"AffineModel: weighting must be one of {', '.join(WEIGHTINGS)} (got {weighting!r})"
            )
        if not isinstance(nonnegative, bool | np.bool_):
            raise ValueError(
                f"AffineModel: nonnegative must be True or False (got {nonnegative!r})"
            )
        if (
            isinstance(min_intercept, bool)
            or not isinstance(min_intercept, int | float | np.floating)
            or not 0.0 <= min_intercept < math.inf
        ):
            raise ValueError(
                f"AffineModel: min_intercept must be a finite number >= 0 (got {min_intercept!r})"
            )
        self.feature_names = names
        self.weighting = weighting
        self.nonnegative = bool(nonnegative)
        self.min_intercept = float(min_intercept)
        self.intercept_: float | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_at_bound_ = False

    def __repr__(self) -> str:
        state = (
            f", intercept_={self.intercept_!r}, coef_={self.coef_.tolist()!r}"
            if self.coef_ is not None
            else ""
        )
        return (
            f"AffineModel(feature_names={self.feature_names!r}, weighting={self.weighting!r}, "
            f"nonnegative={self.nonnegative!r}, min_intercept={self.min_intercept!r}{state})"
        )

    @property
    def n_features(self) -> int:
        """Number of columns of X."""
        return len(self.feature_names)

    @property
    def n_params(self) -> int:
        """Number of fitted parameters: one slope per feature plus the intercept."""
        return self.n_features + 1

    def get_params(self) -> dict[str, Any]:
        """The construction arguments."""
        return {
            "feature_names": self.feature_names,
            "weighting": self.weighting,
            "nonnegative": self.nonnegative,
            "min_intercept": self.min_intercept,
        }

    def clone(self) -> AffineModel:
        """An unfitted model with the same arguments."""
        return AffineModel(**self.get_params())

    @property
    def method(self) -> str:
        """How the model is fitted, in words (for reports)."""
        solver = "nnls" if self.nonnegative else "lstsq"
        return f"affine {solver}, {self.weighting} weights"

    def _design(self, X: Any) -> np.ndarray:
        """X as a finite (n, n_features) float array."""
        array = np.asarray(X, dtype=float)
        if array.ndim == 1 and self.n_features == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2 or array.shape[1] != self.n_features:
            raise ValueError(
                f"X must have shape (n, {self.n_features}) for features "
                f"{', '.join(self.feature_names)} (got shape {array.shape})"
            )
        bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
        if bad.size:
            raise ValueError(f"X must be finite (sample {int(bad[0])} is not)")
        return array

    def _target(self, y: Any, n: int) -> np.ndarray:
        """y as a finite length-n float array (> 0 under relative weighting)."""
        values = np.asarray(y, dtype=float)
        if values.shape != (n,):
            raise ValueError(f"y must have shape ({n},) to match X (got shape {values.shape})")
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"y must be finite (sample {int(bad[0])} is {values[bad[0]]})")
        if self.weighting == "relative":
            bad = np.flatnonzero(values <= 0.0)
            if bad.size:
                raise ValueError(
                    f"y must be > 0 with relative weighting (sample {int(bad[0])} is "
                    f"{values[bad[0]]})"
                )
        return values

    def _check_identifiable(self, X: np.ndarray) -> None:
        """ValueError naming a feature whose slope the samples cannot determine."""
        n = X.shape[0]
        if n < self.n_params:
            raise ValueError(
                f"needs at least {self.n_params} samples to fit {self.n_params} parameters "
                f"(intercept and a slope for {', '.join(self.feature_names)}) (got {n})"
            )
        for j, name in enumerate(self.feature_names):
            if np.all(X[:, j] == X[0, j]):
                raise ValueError(
                    f"every sample has {name} = {X[0, j]:g}: its slope cannot be identified "
                    f"(needs at least 2 distinct {name} values)"
                )
        design = _scaled(np.column_stack([np.ones(n), X]))
        rank = np.linalg.matrix_rank(design)
        if rank < self.n_params:
            involved = [
                name
                for j, name in enumerate(self.feature_names)
                if np.linalg.matrix_rank(np.delete(design, j + 1, axis=1)) == rank
            ]
            raise ValueError(
                f"{', '.join(involved)} vary together (an affine combination of one another "
                f"across the samples): their slopes cannot be separated; vary them independently"
            )

    def _solve(self, X: np.ndarray, y: np.ndarray) -> AffineModel:
        """Fit without the identifiability checks (used on cross-validation folds)."""
        design = np.column_stack([np.ones(X.shape[0]), X])
        weights = 1.0 / y if self.weighting == "relative" else np.ones_like(y)
        design = design * weights[:, None]
        target = y * weights
        scale = np.max(np.abs(design), axis=0)
        scale[scale == 0.0] = 1.0
        if self.nonnegative:
            solution, _ = nnls(design / scale, target)
        else:
            solution = np.linalg.lstsq(design / scale, target, rcond=None)[0]
        params = solution / scale
        self.intercept_at_bound_ = bool(params[0] < self.min_intercept)
        if self.intercept_at_bound_:
            # The best fit over the smaller set {intercept >= bound} then has the intercept
            # at the bound (the objective is convex and its minimum lies outside the set), so
            # the slopes are the best fit to y - bound.
            rest = target - self.min_intercept * design[:, 0]
            slopes = design[:, 1:] / scale[1:]
            if self.nonnegative:
                solution, _ = nnls(slopes, rest)
            else:
                solution = np.linalg.lstsq(slopes, rest, rcond=None)[0]
            params = np.concatenate([[self.min_intercept], solution / scale[1:]])
        self.intercept_ = float(params[0])
        self.coef_ = params[1:].astype(float)
        return self

    def fit(self, X: Any, y: Any) -> AffineModel:
        """Fit to samples X (n, n_features; 1-D allowed for one feature) and y (n,); returns
        self, fitted."""
        design = self._design(X)
        target = self._target(y, design.shape[0])
        self._check_identifiable(design)
        return self._solve(design, target)

    def predict(self, X: Any) -> np.ndarray:
        """intercept_ + X @ coef_ for X of shape (n, n_features) (1-D for one feature)."""
        if self.coef_ is None or self.intercept_ is None:
            raise ValueError("AffineModel is not fitted: call fit(X, y) first")
        return self.intercept_ + self._design(X) @ self.coef_


def _scaled(design: np.ndarray) -> np.ndarray:
    """Columns divided by their largest magnitude (for rank decisions independent of units)."""
    scale = np.max(np.abs(design), axis=0)
    scale[scale == 0.0] = 1.0
    return design / scale


def cross_validate(model: AffineModel, X: Any, y: Any, folds: int = DEFAULT_FOLDS) -> FitReport:
    """The FitReport of `model`'s arguments on (X, y): held-out MAPE from k-fold
    cross-validation, k = min(folds, n), and training MAPE of the fit on all samples; the
    held-out MAPE per configuration from k = min(folds, configurations) folds of
    configurations (NaN below MIN_CONFIGS configurations) and the timing noise (see FitReport).

    `model` is used as a template (its arguments); it is not modified. Folds are fitted
    without identifiability checks: a training fold that happens not to identify a slope still
    gets NNLS's solution, and the held-out error shows what that costs.
    """
    folds = _check_folds(folds)
    template = model.clone()
    design = template._design(X)
    target = template._target(y, design.shape[0])
    n = design.shape[0]
    if n < 2:
        raise ValueError(f"cross-validation needs at least 2 samples (got {n})")
    full = template.clone().fit(design, target)
    fold_of, k = _folds(design, folds)
    held_out = np.empty(n)
    for fold in range(k):
        test = fold_of == fold
        part = template.clone()._solve(design[~test], target[~test])
        held_out[test] = part.predict(design[test])
    keys, config_of = _configurations(design)
    medians = np.array([np.median(target[config_of == c]) for c in range(keys.shape[0])])
    method = f"{template.method}, {k}-fold CV"
    mape_config = math.nan
    if keys.shape[0] >= MIN_CONFIGS:
        config_fold, k_config = _folds(keys, folds)
        held_config = np.empty(keys.shape[0])
        for fold in range(k_config):
            test = config_fold == fold
            train = ~test[config_of]
            part = template.clone()._solve(design[train], target[train])
            held_config[test] = part.predict(keys[test])
        mape_config = mape(medians, held_config)
        method = f"{method}, {k_config}-fold by configuration"
    return FitReport(
        n_samples=n,
        mape_holdout=mape(target, held_out),
        mape_train=mape(target, full.predict(design)),
        method=method,
        mape_holdout_config=mape_config,
        noise_spread=_noise_spread(target, config_of, medians),
        n_configs=int(keys.shape[0]),
    )


# --------------------------------------------------------------------------------------------
# Profile fitters
# --------------------------------------------------------------------------------------------


def _samples(what: str, samples: Any, kind: type) -> list:
    """`samples` as a list, every item a `kind` (TypeError otherwise)."""
    if isinstance(samples, str | bytes) or not isinstance(samples, Sequence):
        raise TypeError(
            f"{what}: expected a sequence of {kind.__name__} (got {type(samples).__name__})"
        )
    items = list(samples)
    for i, item in enumerate(items):
        if not isinstance(item, kind):
            raise TypeError(
                f"{what}: sample {i} is a {type(item).__name__}, expected {kind.__name__}"
            )
    return items


def _require(what: str, n: int, need: int, params: str) -> None:
    if n < need:
        raise ValueError(
            f"{what}: needs at least {need} samples (got {n}): {need - 1} parameters "
            f"({params}) plus one so that every cross-validation fold can be fitted"
        )


def _require_spread(what: str, values: np.ndarray, field: str, param: str) -> None:
    if np.all(values == values[0]):
        raise ValueError(
            f"{what}: every sample has {field} = {values[0]:g}, so {param} cannot be "
            f"identified (needs at least 2 distinct {field} values)"
        )


MIN_BASE_FRACTION = 0.01
"""An intercept the schema needs > 0 is bounded below by this fraction of the fastest sample."""


def _affine(
    what: str,
    intercept: str,
    features: Sequence[tuple[str, np.ndarray, np.ndarray, str]],
    y: np.ndarray,
    positive: bool = False,
) -> tuple[AffineModel, FitReport]:
    """Fit `intercept` + one slope per feature, with the checks and messages of the profile
    fitters. Each feature is (sample field, its values, the model column, slope parameter).
    `positive`: the schema needs the intercept > 0, so it is bounded below by
    MIN_BASE_FRACTION of the fastest sample (the report's method says when the bound held)."""
    params = [intercept, *(param for *_, param in features)]
    _require(what, y.size, len(params) + 1, ", ".join(params))
    for field, values, _, param in features:
        _require_spread(what, values, field, param)
    bad = np.flatnonzero(y <= 0.0)
    if bad.size:
        raise ValueError(f"{what}: seconds must be > 0 to fit (sample {int(bad[0])} has 0)")
    X = np.column_stack([column for _, _, column, _ in features])
    floor = MIN_BASE_FRACTION * float(np.min(y)) if positive else 0.0
    model = AffineModel(tuple(field for field, *_ in features), min_intercept=floor)
    try:
        model.fit(X, y)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    report = cross_validate(model, X, y)
    if model.intercept_at_bound_:
        report = dataclasses.replace(
            report,
            method=(
                f"{report.method}; {intercept} held at its lower bound, "
                f"{100 * MIN_BASE_FRACTION:g}% of the fastest sample (the samples extrapolate "
                f"to <= 0 at no work: noisy, or not affine)"
            ),
        )
    return model, report


def _feature(field: str, values: Sequence[float], param: str, offset: float = 0.0) -> tuple:
    """A feature for `_affine`: the model column is values - offset."""
    raw = np.asarray(values, dtype=float)
    return (field, raw, raw - offset, param)


ZERO_RELATIVE = 1e-9
"""A fitted per-byte cost below this fraction of the largest measured time counts as 0."""


def _fit_prefill(what: str, prefill: Sequence[PrefillSample]) -> tuple[float, float, FitReport]:
    """(prefill_base_s, prefill_per_token_s, report) from prefill samples."""
    pre = _samples(f"{what}: prefill", prefill, PrefillSample)
    model, report = _affine(
        f"{what}: prefill",
        "prefill_base_s",
        [_feature("prompt_len", [s.prompt_len for s in pre], "prefill_per_token_s")],
        np.array([s.seconds for s in pre], dtype=float),
    )
    assert model.coef_ is not None
    return model.intercept_, float(model.coef_[0]), report


QUADRATIC_PREFILL_LENGTHS = 3
"""Distinct prompt lengths a target prefill fit needs to include its L^2 (attention) term."""


def _fit_target_prefill(
    what: str, prefill: Sequence[PrefillSample]
) -> tuple[float, float, float, FitReport]:
    """(prefill_base_s, prefill_per_token_s, prefill_per_token_squared_s, report) from a
    target's prefill samples: with the L^2 term where the samples have at least
    QUADRATIC_PREFILL_LENGTHS distinct lengths and one sample more than that (three parameters
    and cross-validation), else 0 (the affine fit)."""
    pre = _samples(f"{what}: prefill", prefill, PrefillSample)
    lengths = [s.prompt_len for s in pre]
    if len(set(lengths)) < QUADRATIC_PREFILL_LENGTHS or len(lengths) <= QUADRATIC_PREFILL_LENGTHS:
        base, per_token, report = _fit_prefill(what, prefill)
        return base, per_token, 0.0, report
    model, report = _affine(
        f"{what}: prefill",
        "prefill_base_s",
        [
            _feature("prompt_len", lengths, "prefill_per_token_s"),
            _feature("prompt_len_squared", [n * n for n in lengths], "prefill_per_token_squared_s"),
        ],
        np.array([s.seconds for s in pre], dtype=float),
    )
    assert model.coef_ is not None
    return model.intercept_, float(model.coef_[0]), float(model.coef_[1]), report


def fit_draft_latency(
    prefill: Sequence[PrefillSample], decode: Sequence[DecodeSample]
) -> tuple[DraftLatency, dict[str, FitReport]]:
    """The draft latency model and the report of each part ("prefill", "decode").

    prefill(L) = prefill_base_s + prefill_per_token_s * L from the prefill samples;
    decode(ctx) = decode_base_s + decode_per_context_token_s * ctx from the decode samples.
    Each part needs >= 3 samples with at least 2 distinct lengths; decode_base_s, which the
    schema needs > 0, is bounded below by MIN_BASE_FRACTION of the fastest decode sample.
    """
    prefill_base, prefill_per_token, pre_report = _fit_prefill("fit_draft_latency", prefill)
    dec = _samples("fit_draft_latency: decode", decode, DecodeSample)
    dec_y = np.array([s.seconds for s in dec], dtype=float)
    dec_model, dec_report = _affine(
        "fit_draft_latency: decode",
        "decode_base_s",
        [_feature("context_len", [s.context_len for s in dec], "decode_per_context_token_s")],
        dec_y,
        positive=True,
    )
    assert dec_model.coef_ is not None
    latency = DraftLatency(
        prefill_base_s=prefill_base,
        prefill_per_token_s=prefill_per_token,
        decode_base_s=dec_model.intercept_,
        decode_per_context_token_s=float(dec_model.coef_[0]),
    )
    return latency, {"prefill": pre_report, "decode": dec_report}


def fit_target_latency(
    prefill: Sequence[PrefillSample], forward: Sequence[ForwardSample]
) -> tuple[TargetLatency, dict[str, FitReport]]:
    """The target latency model and the report of each part ("prefill", "forward").

    prefill(L) = prefill_base_s + prefill_per_token_s * L + prefill_per_token_squared_s * L^2
    from the prefill samples (the L^2 term needs 3+ prompt lengths, else it is 0);
    forward = forward_base_s + forward_per_token_s * new_positions
    + forward_per_context_token_s * context_len + forward_per_extra_sequence_s * (batch - 1)
    + forward_per_position_context_s * new_positions * context_len / batch
    from the forward samples (positions and context summed over the batch). The forward part
    needs >= 5 samples in which positions, context and batch each take 2+ values and vary
    independently; forward_base_s, which the schema needs > 0, is bounded below by
    MIN_BASE_FRACTION of the fastest forward sample.
    """
    prefill_base, prefill_per_token, prefill_squared, pre_report = _fit_target_prefill(
        "fit_target_latency", prefill
    )
    fwd = _samples("fit_target_latency: forward", forward, ForwardSample)
    fwd_y = np.array([s.seconds for s in fwd], dtype=float)
    fwd_model, fwd_report = _affine(
        "fit_target_latency: forward",
        "forward_base_s",
        [
            _feature("new_positions", [s.new_positions for s in fwd], "forward_per_token_s"),
            _feature("context_len", [s.context_len for s in fwd], "forward_per_context_token_s"),
            _feature("batch", [s.batch for s in fwd], "forward_per_extra_sequence_s", offset=1.0),
            _position_context(fwd),
        ],
        fwd_y,
        positive=True,
    )
    assert fwd_model.coef_ is not None
    latency = TargetLatency(
        prefill_base_s=prefill_base,
        prefill_per_token_s=prefill_per_token,
        prefill_per_token_squared_s=prefill_squared,
        forward_base_s=fwd_model.intercept_,
        forward_per_token_s=float(fwd_model.coef_[0]),
        forward_per_context_token_s=float(fwd_model.coef_[1]),
        forward_per_extra_sequence_s=float(fwd_model.coef_[2]),
        forward_per_position_context_s=float(fwd_model.coef_[3]),
    )
    return latency, {"prefill": pre_report, "forward": fwd_report}


def _position_context(samples: Sequence[ForwardSample]) -> tuple:
    """The attention feature: sum over the batch of positions x context (sequences alike)."""
    return _feature(
        "position_context",
        [s.new_positions * s.context_len / s.batch for s in samples],
        "forward_per_position_context_s",
    )


def fit_link(samples: Sequence[TransferSample]) -> tuple[float, float, FitReport]:
    """(overhead_s, megabits_per_s, report) of one link direction.

    time = overhead_s + n_bytes * 8 / (megabits_per_s * 1e6): the intercept is the per-message
    overhead, the slope the per-byte cost. Needs >= 3 samples with at least 2 distinct sizes;
    transfer time must grow with size (else the bandwidth is unbounded and ValueError says so).
    """
    items = _samples("fit_link", samples, TransferSample)
    sizes = np.array([s.n_bytes for s in items], dtype=float)
    times = np.array([s.seconds for s in items], dtype=float)
    model, report = _affine(
        "fit_link", "overhead_s", [_feature("n_bytes", sizes, "seconds_per_byte")], times
    )
    assert model.coef_ is not None and model.intercept_ is not None
    per_byte = float(model.coef_[0])
    if per_byte * np.max(sizes) <= ZERO_RELATIVE * np.max(times):
        raise ValueError(
            "fit_link: transfer time does not grow with n_bytes (fitted per-byte cost 0), so "
            "the bandwidth cannot be estimated; measure larger transfers"
        )
    return model.intercept_, 8.0 / (per_byte * 1e6), report


# --------------------------------------------------------------------------------------------
# Acceptance
# --------------------------------------------------------------------------------------------


def _bin_index(edges: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Bin of each confidence, the rule `simulator.acceptance.accept_probability` uses
    (left-closed bins; 1.0 falls in the last)."""
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, len(edges) - 2)


def _table(index: np.ndarray, accepted: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts per bin, P(accept) per bin); an empty bin gets the overall acceptance rate."""
    counts = np.bincount(index, minlength=bins).astype(float)
    hits = np.bincount(index, weights=accepted.astype(float), minlength=bins)
    overall = float(accepted.mean())
    rates = np.divide(hits, counts, out=np.full(bins, overall), where=counts > 0)
    return counts, rates


def fit_acceptance(
    samples: Sequence[AcceptanceSample], bins: int = 10
) -> tuple[CalibratedAcceptance, FitReport]:
    """A calibrated acceptance model from (confidence, accepted) samples, and its report.

    `bins` equal-width bins over [0, 1] (edges i / bins; left-closed, 1.0 in the last bin, as
    the simulator looks them up). The confidence distribution is a histogram whose weights are
    the sample counts per bin (the simulator draws uniformly within a bin). P(accept | c) is a
    table: the observed acceptance rate of each bin; a bin without samples gets the overall
    acceptance rate (the best guess with no local evidence; its histogram weight is 0, so the
    simulator never draws from it).

    The report's MAPE fields are NaN (meaningless for binary outcomes): it holds the held-out
    and training Brier scores and the held-out expected calibration error (see FitReport),
    from k = min(5, n) deterministic folds over the samples sorted by confidence; `passes()`
    compares the calibration error with its goal. Needs >= 2 samples; `bins` an integer >= 1.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"fit_acceptance: bins must be an integer >= 1 (got {bins!r})")
    bins = int(bins)
    items = _samples("fit_acceptance", samples, AcceptanceSample)
    n = len(items)
    if n < 2:
        raise ValueError(
            f"fit_acceptance: needs at least 2 samples (got {n}) so that the fit can be "
            f"checked on held-out samples"
        )
    confidence = np.array([s.confidence for s in items], dtype=float)
    accepted = np.array([s.accepted for s in items], dtype=bool)
    edges = np.array([i / bins for i in range(bins + 1)])
    index = _bin_index(edges, confidence)
    counts, rates = _table(index, accepted, bins)

    outcome = accepted.astype(float)
    fold_of, k = _folds(confidence.reshape(-1, 1), DEFAULT_FOLDS)
    held_out = np.empty(n)
    calibration = 0.0
    for fold in range(k):
        test = fold_of == fold
        _, fold_rates = _table(index[~test], accepted[~test], bins)
        held_out[test] = fold_rates[index[test]]
        test_counts, test_rates = _table(index[test], accepted[test], bins)
        calibration += float(np.sum(test_counts * np.abs(fold_rates - test_rates)))
    report = FitReport(
        n_samples=n,
        mape_holdout=math.nan,
        mape_train=math.nan,
        method=f"binned P(accept | confidence), {bins} bins, {k}-fold CV",
        brier_holdout=float(np.mean((held_out - outcome) ** 2)),
        brier_train=float(np.mean((rates[index] - outcome) ** 2)),
        calibration_error_holdout=calibration / n,
    )
    model = CalibratedAcceptance(
        kind="calibrated",
        confidence=HistogramConfidence(
            kind="histogram", edges=edges.tolist(), weights=counts.tolist()
        ),
        p_accept=TableCurve(kind="table", edges=edges.tolist(), values=rates.tolist()),
    )
    return model, report


__all__ = [
    "DEFAULT_FOLDS",
    "MAPE_GOAL",
    "MIN_BASE_FRACTION",
    "MIN_CONFIGS",
    "WEIGHTINGS",
    "AffineModel",
    "FitReport",
    "cross_validate",
    "fit_acceptance",
    "fit_draft_latency",
    "fit_link",
    "fit_target_latency",
    "mape",
]
